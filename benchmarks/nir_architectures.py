"""NIR export of real architectures, run in sinabs against the SNN file (exactness at scale).

Torchvision ResNet-18, ResNet-50 and MobileNetV2 (random weights; torch's legacy exporter) and
the ONNX model zoo's DenseNet-121 and ResNet-50, 224×224, converted with what NIR expresses
exactly (``--init zero --no-compensation``) at T = 4 on four smooth random images, exported with
``icsnn-onnx export --to nir`` (defaults: every threshold 1, grouped convolutions dense) and run
in sinabs 3.1 with icsnn's neuron semantics on four other images (one where the zoo's graph has
a batch of 1): the largest output difference from ONNX Runtime's, and whether the classes agree;
again with ``--thresholds keep`` (θ not folded into the weights, so no rounding moves a membrane).
The zoo's ResNet-50 ends in a Softmax, which NIR cannot express (the export refuses it): its
logits are exported, as a user would. Also the export's size and time.

    python benchmarks/nir_architectures.py        # ~3-5 min on 2 CPU cores

Writes benchmarks/results/nir_architectures.json.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, save_json, smooth_images
from real_architectures import architecture

import icsnn_onnx
from icsnn_onnx.export import NirOptions, to_nir
from icsnn_onnx.export.sinabs_run import run_sinabs
from icsnn_onnx.runtime import Session

T = 4
NETS = ("resnet18", "resnet50", "mobilenet_v2", "zoo densenet121", "zoo resnet50")


def model(name: str) -> onnx.ModelProto:
    built = architecture(name, cache=CACHE / "nir_architectures")
    last = built.graph.node[-1]
    if last.op_type == "Softmax":  # NIR has no Softmax: export the logits, as a user would
        del built.graph.node[-1]
        built.graph.output[0].name = last.input[0]
    return built


def measure(name: str) -> dict:
    ann = model(name)
    static = ann.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    n = 1 if static else 4  # the zoo's graphs have a batch of 1
    calib, x = smooth_images(n, 224, seed=7), smooth_images(n, 224, seed=8)
    snn = icsnn_onnx.convert(ann, calib, T=T, init="zero", compensation=False)
    start = time.perf_counter()
    exported = to_nir(snn)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    got = run_sinabs(exported.graph, x, T, batch_size=n)
    sinabs_s = time.perf_counter() - start
    ref = Session(snn, provider="cpu").run(x)[snn.graph.output[0].name].reshape(got.shape)
    # θ kept as the threshold (not folded into the weights): no rounding moves a membrane.
    kept = run_sinabs(to_nir(snn, NirOptions(thresholds="keep")).graph, x, T, batch_size=n)
    kinds = Counter(type(node).__name__ for node in exported.graph.nodes.values())
    entry = {
        "sites": exported.sites,
        "nir_nodes": dict(kinds),
        "export_s": round(export_s, 2),
        "sinabs_s": round(sinabs_s, 1),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "max_abs_diff_thresholds_kept": float(np.abs(kept - ref).max()),
        "output_scale": float(np.abs(ref).max()),
        "class_agreement": float((got.reshape(n, -1).argmax(1) == ref.reshape(n, -1).argmax(1)).mean()),
        "images": n,
    }
    print(name, entry, flush=True)
    return entry


def main() -> None:
    import nir
    import sinabs

    report = {
        "what": f"NIR exports of real architectures run in sinabs vs the SNN in ONNX Runtime, T={T}, 224×224",
        "consumer": f"sinabs {sinabs.__version__}, nir {nir.version}",
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "nets": {name: measure(name) for name in NETS},
    }
    save_json(RESULTS / "nir_architectures.json", report)
    print(f"wrote {RESULTS / 'nir_architectures.json'}")


if __name__ == "__main__":
    main()

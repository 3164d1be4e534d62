"""The pretrained backbone's feature pass on a CPU: images per second against its input size
and how it runs, preprocessing included (uint8 64×64 RGB photos → resize to S×S → features
[B, 1280]), batch 128.

Variants, all on the same images and the same pinned weights:

* ``shipped``: ``get_backbone("efficientnet_lite0").features(x, S)`` as the package runs it now:
  under OpenVINO where it is installed and reproduces PyTorch (``openvino_runtime``), else
  PyTorch; converted into a fresh ``$VAEOOD_CACHE``, so its first call counts the conversion;
* ``torch``: the package's PyTorch network (BatchNorm folded into the convolutions,
  channels-last), eager: the baseline every ratio is taken against, and the fallback;
* ``bn_unfolded``: ``efficientnet_lite0(fold=False)``, channels-last (what folding buys);
* ``channels_first``: folded, NCHW (what channels-last buys);
* ``pad_in_conv``: ``torch``, but where TensorFlow's "same" padding is symmetric the convolution
  pads instead of a separate ``F.pad`` (:class:`PadInConv`; a candidate change, same numbers);
* ``compile``: ``torch`` under ``torch.compile`` (a graph per size, its compile time counted
  apart);
* ``onnxruntime``: the folded network exported by ``torch.onnx.export`` (TorchScript
  exporter, ``dynamo=False``; one file per size, as TensorFlow "same" padding is fixed by
  the size), run by ONNX Runtime with ``intra_op_num_threads`` = the torch threads; the
  resize stays in torch; ``onnxruntime_nospin`` the same with its threads not spinning while
  they wait (``session.intra_op.allow_spinning`` = 0: spinning threads fight torch's and other
  processes' for 2 cores);
* ``openvino_onnx``: the same ONNX file under OpenVINO (f32 inference precision);
  ``openvino_bf16`` with bfloat16 inference precision (OpenVINO's own default on CPUs with
  AMX or AVX-512 BF16: its features differ from f32's, see ``max_abs_diff``).

ONNX Runtime is not a project dependency: ``pip install onnxruntime onnx``.
Every (size, variant) pair runs once per round, the first one rotating, so that load from
other processes hits all alike; each number is the median over ``--rounds`` rounds of one
batch, after a warm-up, with the median of the per-round ratios to ``torch`` at that size.
``max_abs_diff`` is each variant's largest feature difference from ``torch`` (features are
ReLU6 averages, in [0, 6]). The load average is recorded at each round's start: rerun if it
was high.

    python benchmarks/backbone_speed.py --rounds 5
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import alternate, finish, machine_info, parser

BATCH = 128
PHOTOS = "tinyimagenet64/train/n01443537"  # goldfish: any 64×64 RGB photos will do


def load_photos(n: int) -> torch.Tensor:
    """uint8 [n, 3, 64, 64]: the first ``n`` Tiny ImageNet photos of one class ($VAEOOD_DATA),
    else random pixels (the pass's speed does not depend on what the image shows)."""
    folder = Path(os.environ.get("VAEOOD_DATA", "")) / PHOTOS
    files = sorted(folder.glob("*.JPEG"))[:n] if os.environ.get("VAEOOD_DATA") else []
    if len(files) < n:
        return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Features(torch.nn.Module):
    """``net.features`` as a module's forward (what ``torch.onnx.export`` traces)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


class PadInConv(torch.nn.Conv2d):
    """``SameConv`` that lets the convolution pad where TensorFlow's "same" padding is symmetric
    (stride 1, odd kernel: 11 of the 17 padded convolutions), instead of a separate ``F.pad``
    (the same numbers; a candidate change measured here, not the package's code)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), 1, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def eager(net, fmt):
    from vaeood.models.backbones.efficientnet_lite import preprocess

    @torch.no_grad()
    def run(x, size):
        return net.features(preprocess(x, size).contiguous(memory_format=fmt))
    return run


def build_variants(names: list[str], threads: int, tmp: Path) -> tuple[dict, dict]:
    """{name: factory(size) → (run(x, size) → features [B, 1280] as a tensor, setup seconds)}
    and {name: why it is unavailable}."""
    from vaeood.models.backbones import get_backbone
    from vaeood.models.backbones.efficientnet_lite import SameConv, efficientnet_lite0, preprocess

    backbone = get_backbone("efficientnet_lite0")
    folded = backbone.network()
    factories, missing = {}, {}

    def shipped(size):
        return (lambda x, s: backbone.features(x, s)), None  # the first call converts: timed by the caller

    def torch_eager(size):
        return eager(folded, torch.channels_last), 0.0

    unfolded_net = efficientnet_lite0(fold=False)

    def unfolded(size):
        return eager(unfolded_net, torch.channels_last), 0.0

    first = efficientnet_lite0().to(memory_format=torch.contiguous_format)
    padded = efficientnet_lite0()
    for module in padded.modules():
        if isinstance(module, SameConv):
            module.__class__ = PadInConv

    def pad_in_conv(size):
        return eager(padded, torch.channels_last), 0.0

    def channels_first(size):
        return eager(first, torch.contiguous_format), 0.0

    fn = torch.compile(folded.features, dynamic=False)  # a graph per size, compiled at its first call

    def compiled(size):
        @torch.no_grad()
        def run(x, s):
            return fn(preprocess(x, s).contiguous(memory_format=torch.channels_last))
        return run, None  # compiles at the first call: timed by the caller

    def onnx_file(size) -> tuple[Path, float]:
        path = tmp / f"lite0_{size}.onnx"
        start = time.perf_counter()
        if not path.exists():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Features(first), (torch.zeros(BATCH, 3, size, size),), str(path), dynamo=False,
                                  input_names=["x"], output_names=["features"], dynamic_axes={"x": {0: "batch"}},
                                  opset_version=17)
        return path, time.perf_counter() - start

    def onnxruntime(size, spinning="1"):
        import onnxruntime as ort

        path, export_s = onnx_file(size)
        start = time.perf_counter()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def run(x, s):
            return torch.from_numpy(session.run(None, {"x": preprocess(x, s).numpy()})[0])
        return run, {"export_s": export_s, "session_s": time.perf_counter() - start}

    def openvino(size, precision="f32"):
        import openvino as ov

        path, export_s = onnx_file(size)
        start = time.perf_counter()
        compiled_model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                    "INFERENCE_PRECISION_HINT": precision,
                                                                    "PERFORMANCE_HINT": "LATENCY"})

        def run(x, s):
            return torch.from_numpy(compiled_model(preprocess(x, s).numpy())[0])
        return run, {"export_s": export_s, "session_s": time.perf_counter() - start}

    every = {"shipped": shipped, "torch": torch_eager, "bn_unfolded": unfolded, "channels_first": channels_first,
             "pad_in_conv": pad_in_conv, "compile": compiled,
             "onnxruntime": onnxruntime, "onnxruntime_nospin": lambda size: onnxruntime(size, "0"),
             "openvino_onnx": openvino, "openvino_bf16": lambda size: openvino(size, "bf16")}
    for name in names:
        module = name.split("_")[0] if name.startswith(("onnxruntime", "openvino")) else None
        if module:
            try:
                __import__(module)
            except ImportError as err:
                missing[name] = f"not installed ({err}); pip install {module} onnx"
                continue
        factories[name] = every[name]
    return factories, missing


def _discarding(run, x, size):
    """``run(x, size)`` as :func:`common.alternate` wants it: its wall time counted (returns None)."""
    return lambda: run(x, size) is None or None


def versions() -> dict:
    out = {}
    for module in ("onnxruntime", "onnx", "openvino"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            pass
    return out


def prepare(factories: dict, sizes: list[int], x: torch.Tensor) -> tuple[dict, dict]:
    """{(size, variant): run} ready to time (each called once) and {size: setup seconds, max |Δ| from
    ``torch``, failures}."""
    runs, notes = {}, {}
    for size in sizes:
        note = notes[size] = {"setup": {}, "max_abs_diff": {}, "failed": {}}
        baseline = factories["torch"](size)[0]
        reference = baseline(x, size)
        for name, factory in factories.items():
            try:
                start = time.perf_counter()
                run, cost = factory(size)
                out = run(x, size)  # the first call (compiles under torch.compile)
                first_s = time.perf_counter() - start
            except Exception as err:  # a runtime that cannot take the model is a result too
                note["failed"][name] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                continue
            if cost is None:  # conversion or compilation at the first call: its time less one eager call
                start = time.perf_counter()
                baseline(x, size)
                cost = {"first_call_extra_s": first_s - (time.perf_counter() - start)}
            note["setup"][name] = cost
            note["max_abs_diff"][name] = float((out - reference).abs().max())
            runs[size, name] = run
    return runs, notes


def main() -> None:
    args = parser(__doc__, sizes=([64, 80, 96, 112, 128], "input sizes S"), rounds=5,
                  threads=(2, "torch (and runtime) threads"),
                  variants=(["shipped", "torch", "bn_unfolded", "channels_first", "pad_in_conv", "compile",
                             "onnxruntime", "onnxruntime_nospin", "openvino_onnx", "openvino_bf16"],
                            "which variants")).parse_args()
    torch.set_num_threads(args.threads)
    x = load_photos(BATCH)
    info = machine_info("cpu")
    variants = ["torch", *(n for n in args.variants if n != "torch")]  # the baseline is always measured
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VAEOOD_CACHE"] = tmp  # shipped converts afresh: its first call counts the conversion
        factories, missing = build_variants(variants, args.threads, Path(tmp))
        runs, notes = prepare(factories, args.sizes, x)
        # every (size, variant) once per round, so that load from other processes hits all alike
        loads = []
        times = alternate({f"{s}/{n}": _discarding(r, x, s) for (s, n), r in runs.items()}, args.rounds,
                          on_round=lambda r: loads.append(round(os.getloadavg()[0], 2)))
        from vaeood.models.backbones import _openvino  # the runner shipped used (cached per size)

        shipped_runtime = {s: "openvino" if _openvino("efficientnet_lite0", s) is not None else "torch"
                           for s in args.sizes} if "shipped" in factories else {}
    loads.append(round(os.getloadavg()[0], 2))
    names = [n for n in variants if n in factories]
    results = {}
    for size in args.sizes:
        got = [n for n in names if f"{size}/{n}" in times]
        ts = {n: times[f"{size}/{n}"] for n in got}
        results[size] = {**notes[size], "seconds": ts,
                         "images_per_s": {n: BATCH / statistics.median(t) for n, t in ts.items()},
                         "best_round_images_per_s": {n: BATCH / min(t) for n, t in ts.items()},
                         "ratio_to_torch": {n: statistics.median(b / a for a, b in zip(t, ts["torch"], strict=True))
                                            for n, t in ts.items()}, "shipped_runtime": shipped_runtime.get(size)}
    lines = [f"{info['cpu']} [{info['cpu_details']}], torch threads {args.threads}, batch {BATCH}, "
             f"median of {args.rounds} rounds (every size and variant in each round); images/s "
             f"(× torch, median of per-round ratios); 1-min load average at each round's start: {loads}; "
             f"shipped ran under {sorted(set(shipped_runtime.values()))}", "",
             "| S | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for size in args.sizes:
        r = results[size]
        cells = [f"{r['images_per_s'][n]:.0f} ({r['ratio_to_torch'][n]:.2f}×)"
                 if n in r["images_per_s"] else "failed" for n in names]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "setup seconds (export, session, or the first call's extra: conversion, compilation) and "
                  "max |Δ features| vs torch:"]
    for size in args.sizes:
        r = results[size]
        parts = [f"{n}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["setup"][n].items()) for n in names
                 if r["setup"].get(n)]
        parts += [f"{n} Δ {d:.1e}" for n, d in r["max_abs_diff"].items() if n != "torch"]
        parts += [f"{n} failed: {why}" for n, why in r["failed"].items()]
        lines.append(f"  S={size}: " + "; ".join(parts))
    lines += [f"  {n}: {why}" for n, why in missing.items()]
    finish("backbone_speed", {"machine": info, "batch": BATCH, "input": "uint8 64x64 RGB (Tiny ImageNet photos)",
                              "runtimes": versions(), "unavailable": missing, "load_average_per_round": loads,
                              "sizes": results}, args.out, *lines)


if __name__ == "__main__":
    main()

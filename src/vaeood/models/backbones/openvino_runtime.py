"""A backbone's forward pass under OpenVINO on a CPU: the same function as the PyTorch network
(float32 throughout; the features agree to about 1e-6), 2.5–3× as many images per second on two
cores (BENCHMARKS.md, *Backbone: input size and speed*).

Converting the network takes seconds, so the converted model is cached in
``$VAEOOD_CACHE`` (default ``~/.cache/vaeood``) under ``openvino/``, named by the backbone, the
weights' SHA-256, the input size and the OpenVINO version, and written atomically. Whatever
is loaded — converted now or read from the cache — must reproduce the PyTorch network's
features on a fixed probe batch before it is used; any failure (OpenVINO missing, a
conversion error, a cache file that disagrees) falls back to PyTorch, with one warning.

Precision is pinned to f32: on CPUs with AMX, OpenVINO would otherwise compute in bfloat16
(features off by up to 1, and not the same numbers as on another CPU).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ...infra.atomic import atomic_write, ensure_dir

log = logging.getLogger(__name__)

#: how far OpenVINO's features may be from PyTorch's on the probe (float32 rounding is ~1e-6)
TOLERANCE = 1e-3


def cache_dir() -> Path:
    return Path(os.environ.get("VAEOOD_CACHE") or Path.home() / ".cache" / "vaeood") / "openvino"


class _Features(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


def probe(size: int) -> torch.Tensor:
    """A fixed input batch of the network's scale: what both runtimes must agree on."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=generator) * 2 - 1


def openvino_features(net: nn.Module, name: str, sha256: str, size: int):
    """``f(inputs) -> [B, D]`` under OpenVINO for ``net`` (already in eval mode), or None where
    OpenVINO cannot give the same features (logged)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        path = cache_dir() / f"{name}-{sha256[:16]}-{size}px-ov{ov.__version__.split('-')[0]}.xml"
        if not path.exists():
            _convert(ov, net, size, path)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()})

        one_at_a_time = threading.Lock()  # the compiled model's one infer request is busy while it runs

        def run(inputs: torch.Tensor) -> torch.Tensor:
            with one_at_a_time:  # two threads scoring at once got "Infer Request is busy"
                return torch.from_numpy(compiled(inputs.contiguous().numpy())[0].copy())

        with torch.no_grad():
            expected = net.features(probe(size))
        error = float((run(probe(size)) - expected).abs().max())
        if not error <= TOLERANCE:
            raise ValueError(f"its features differ from PyTorch's by {error:.2g} on the probe (cache {path})")
        return run
    except Exception as err:  # noqa: BLE001  any failure of the optional runtime: PyTorch gives the same numbers
        log.warning("OpenVINO cannot run the backbone %s at %d px (%s: %s); using PyTorch, 2.5-3x slower on a CPU",
                    name, size, type(err).__name__, err)
        return None


def _convert(ov, net: nn.Module, size: int, path: Path) -> None:
    """Convert ``net``'s feature pass (any batch size, ``size`` × ``size``) and save it at ``path``
    (the .xml and its .bin moved into place together, the .xml last)."""
    log.info("converting the backbone for OpenVINO at %d px (once; cached in %s)", size, path.parent)
    with warnings.catch_warnings():  # the trace fixes the padding of each layer to this size, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit.trace
        model = ov.convert_model(_Features(net), example_input=probe(size), input=[(-1, 3, size, size)])
    ensure_dir(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        ov.save_model(model, str(Path(tmp) / path.name), compress_to_fp16=False)
        for saved in (Path(tmp) / path.with_suffix(".bin").name, Path(tmp) / path.name):
            atomic_write(path.parent / saved.name, lambda f, saved=saved: f.write(saved.read_bytes()))

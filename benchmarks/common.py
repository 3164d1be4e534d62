"""The harness every benchmark shares: its command line and result file, the machine
description, data, the one conv VAE every benchmark uses, its pythae twin (same modules,
same weights), and a timer that runs competitors in alternation.

Benchmarks are scripts, not library code: they print, and they write JSON under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vaeood._reproducible import cpu_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent

BASE_CHANNELS = 32
LATENT_DIM = 16


# -- command line and result ---------------------------------------------------------------
def parser(doc: str, **options) -> argparse.ArgumentParser:
    """A benchmark's command line: ``--device`` (default cpu), ``--out`` (default
    ``results/<benchmark>.json``) and ``--NAME`` per option: ``name=default`` or ``name=
    (default, help)``; the type follows the default, ``False`` makes a flag and a list
    takes several values."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, value in {"device": "cpu", **options, "out": None}.items():
        default, text = value if isinstance(value, tuple) else (value, None)
        flag = "--" + name.replace("_", "-")
        if default is False:
            p.add_argument(flag, action="store_true", help=text)
        elif isinstance(default, list):
            p.add_argument(flag, nargs="*", default=default, help=text, type=type(default[0]) if default else str)
        else:
            p.add_argument(flag, default=default, help=text, type=str if default is None else type(default))
    return p


def finish(name: str, result: dict, out: str | None, *lines: str, hide: dict | None = None) -> dict:
    """Write ``result`` (with the command line, ``hide``'s arguments replaced by their
    placeholders) and print ``lines`` and where it went."""
    path = write_result(name, {"benchmark": name, "command": command_line(hide), **result}, out)
    print("\n".join([*lines, f"→ {path}"]))
    return result


# -- machine ------------------------------------------------------------------------------
def machine_info(device: str = "cpu") -> dict:
    info = {
        **cpu_description(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                if os.environ.get(k) is not None},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def command_line(hide: dict | None = None) -> str:
    """The command that produced a result, as it would be typed from the repo root, with
    the arguments in ``hide`` (e.g. a run directory) replaced by placeholders."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    args = [(hide or {}).get(arg, arg) for arg in sys.argv[1:]]
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, args)])


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- data and models ------------------------------------------------------------------------
def data_dir() -> str | None:
    return os.environ.get("VAEOOD_DATA")


def real_data_and_cache(args, holding: str) -> tuple[Path, Path | None]:
    """$VAEOOD_DATA (or exit saying it must hold ``holding``) and ``args.cache`` made (None when
    not given, or for a benchmark without ``--cache``), with torch at ``args.threads`` threads:
    the start of a benchmark on real data."""
    if not data_dir():
        raise SystemExit(f"set VAEOOD_DATA to the folder holding {holding}")
    torch.set_num_threads(args.threads)
    cache = Path(args.cache) if getattr(args, "cache", None) else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    return Path(data_dir()), cache


def load_images(name: str = "fashion_mnist", split: str = "train", limit: int | None = None):
    """(uint8 NCHW tensor on the CPU, the vaeood Dataset) from $VAEOOD_DATA, else the
    bundled sample (the JSON says which)."""
    from vaeood.data import load_dataset
    from vaeood.training.run import to_tensor

    data = load_dataset(name, split, data_dir=data_dir(), allow_sample=True)
    images = data.images[:limit] if limit else data.images
    return to_tensor(images), data


def train_run(out_dir: Path, device: str, images: int, epochs: int) -> Path:
    """A run directory of the benchmarks' conv VAE trained briefly by ``vaeood.training.train`` on
    the first ``images`` Fashion-MNIST training images, so that scores are a real model's."""
    from vaeood.training.config import Config
    from vaeood.training.train import train

    cfg = Config().override({"train.epochs": str(epochs), "train.device": device, "data.limit": str(images),
                             "data.allow_sample": "true", "model.base_channels": str(BASE_CHANNELS),
                             "model.latent_dim": str(LATENT_DIM)})
    return train(cfg, Path(out_dir) / "run", data_dir=data_dir(), progress=False)


def bare_neg_elbo(encoder, decoder, x_uint8: torch.Tensor) -> torch.Tensor:
    """The hand-written reference every benchmark compares vaeood with: per-image
    −ELBO in nats (scale to [0, 1], encode, reparameterise, decode, Bernoulli
    BCE-with-logits + analytic Gaussian KL), shape ``[B]``."""
    x = x_uint8.float() / 255.0
    mu, logvar = encoder(x).chunk(2, dim=-1)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    rec = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").flatten(1).sum(1)
    return rec + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def vaeood_model(seed: int = 0, image_shape=(1, 28, 28), base: int = BASE_CHANNELS, latent: int = LATENT_DIM):
    from vaeood.training.config import Config
    from vaeood.models import build_model

    cfg = Config().override({"model.base_channels": str(base), "model.latent_dim": str(latent)})
    torch.manual_seed(seed)
    return build_model(cfg.model, tuple(image_shape))


def pythae_twin(model):
    """pythae's ``VAE`` around copies of ``model``'s encoder and decoder (same weights),
    with pythae's Bernoulli decoder (``reconstruction_loss="bce"``): the decoder wrapper
    returns ``sigmoid(logits)``, which pythae feeds to ``F.binary_cross_entropy`` against
    the grey levels in [0, 1] — the same likelihood as vaeood's ``bernoulli``. The copies
    are NCHW, as pythae's users run them (vaeood scores conv models in NHWC)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self, net):
            BaseEncoder.__init__(self)
            self.net = net

        def forward(self, x):
            mu, logvar = self.net(x).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self, net):
            BaseDecoder.__init__(self)
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    config = VAEConfig(input_dim=tuple(model.image_shape), latent_dim=model.latent_dim, reconstruction_loss="bce")
    enc, dec = (copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in (model.encoder, model.decoder))
    twin = VAE(config, encoder=Encoder(enc), decoder=Decoder(dec))
    return twin.to(next(model.parameters()).device)


def quiet_pythae() -> None:
    """pythae attaches console handlers at INFO to its loggers at import time."""
    import logging

    import pythae.pipelines  # noqa: F401  (creates the loggers)
    import pythae.trainers  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)


# -- timing ---------------------------------------------------------------------------------
def alternate(competitors: dict[str, Callable[[], float | None]], rounds: int, warmup: bool = True,
              peaks: list | None = None, device="cpu", on_round: Callable[[int], None] | None = None) -> dict:
    """Run every competitor once per round, the starting one rotating between rounds, so
    slow drifts of a shared machine hit all of them alike. A competitor returns the
    seconds it wants counted (or None: its wall time is used).

    With ``peaks`` (a list), :func:`peak_probe` runs at the start of every round and its
    result is appended. ``on_round(r)`` runs before round r (0-based; e.g. to pick the
    round's images). Returns {name: [seconds per round]}; :func:`summarise` turns them into medians and
    per-round ratios (robust to load that changes between rounds).
    """
    names = list(competitors)
    if warmup:
        for name in names:
            competitors[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        if on_round is not None:
            on_round(r)
        if peaks is not None:
            peaks.append(peak_probe(device))
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            counted = competitors[name]()
            wall = time.perf_counter() - start
            times[name].append(float(counted) if counted is not None else wall)
    return times


def seconds_per_call(fn: Callable[[], object], samples: int, calls: int, device="cpu", warmup: int = 1) -> list[float]:
    """``samples`` timings of the seconds per call of ``calls`` calls of ``fn`` (the device
    synchronised before each clock stops), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        out.append((time.perf_counter() - start) / calls)
    return out


def median_seconds(fn: Callable[[], object], samples: int = 3, calls: int = 1, device="cpu") -> float:
    """Median over ``samples`` timings of the seconds per call of ``calls`` calls of ``fn``
    (after one untimed call)."""
    return statistics.median(seconds_per_call(fn, samples, calls, device))


def summarise(times: dict[str, list[float]], work: dict[str, float], unit: str = "images_per_s") -> dict:
    """Median throughput of each competitor (``work[name]`` units per round) and the
    median of the per-round ratios against every other competitor."""
    out = {"rounds": len(next(iter(times.values()))), "seconds": times, unit: {}, "ratios": {}}
    for n, ts in times.items():
        out[unit][n] = work[n] / statistics.median(ts)
    names = list(times)
    for a in names:
        for b in names:
            if a != b:
                per_round = [(work[a] / ta) / (work[b] / tb) for ta, tb in zip(times[a], times[b], strict=True)]
                out["ratios"][f"{a}/{b}"] = statistics.median(per_round)
    return out


def gemm_gflops(fn, size: int, repeat: int, reps: int, device) -> dict:
    """GFLOP/s of ``fn``, a ``size`` × ``size`` GEMM (2 size³ FLOPs), over ``reps`` timings of
    ``repeat`` calls each (after two untimed calls)."""
    samples = [2 * size**3 / s / 1e9 for s in seconds_per_call(fn, reps, repeat, device, warmup=2)]
    return {"median": statistics.median(samples), "max": max(samples), "samples": samples}


def onednn_peak_gflops(size: int, repeat: int, reps: int) -> dict | None:
    try:
        from torch.utils import mkldnn

        layer = mkldnn.to_mkldnn(torch.nn.Linear(size, size, bias=False))
        x = torch.randn(size, size).to_mkldnn()
        with torch.no_grad():
            return gemm_gflops(lambda: layer(x), size, repeat, reps, "cpu")
    except Exception as err:  # oneDNN not built in
        return {"error": f"{type(err).__name__}: {err}"}


def peak_probe(device="cpu", size: int = 1024, repeat: int = 4, reps: int = 3) -> dict[str, float]:
    """Quick fp32 GEMM GFLOP/s now (best of ``reps``): ``mm`` (torch.mm) and, on CPUs,
    ``onednn`` (the same GEMM through oneDNN). Benchmarks call it once per round so that a
    workload's fraction of peak is taken against the peak under the same machine load."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = {"mm": gemm_gflops(lambda: torch.mm(a, b), size, repeat, reps, device)["max"]}
    if device.type == "cpu":
        one = onednn_peak_gflops(size, repeat, reps)
        if one and "max" in one:
            out["onednn"] = one["max"]
    return out


def fraction_of_peak(seconds: list[float], flops_per_round: float, peaks: list[dict]) -> dict[str, float]:
    """Median over rounds of (achieved GFLOP/s in the round) / (peak probed in the round)."""
    out = {}
    for key in peaks[0] if peaks else []:
        out[key] = statistics.median(flops_per_round / t / 1e9 / p[key] for t, p in zip(seconds, peaks, strict=True))
    out["achieved_gflops"] = flops_per_round / statistics.median(seconds) / 1e9
    return out


def peak_fractions(times: dict[str, list[float]], flops_per_round: dict[str, float], peaks: list[dict]) -> dict:
    """Each competitor's :func:`fraction_of_peak`, with the peaks probed per round."""
    return {"fraction_of_peak": {k: fraction_of_peak(times[k], flops_per_round[k], peaks) for k in times},
            "peaks_per_round_gflops": peaks}


def in_fresh_process(script: str, argv: list[str] | None, *extra: str) -> dict:
    """Run ``script`` with this process's arguments (or ``argv``) plus ``extra`` in a new
    interpreter, and return the JSON object it prints last."""
    import subprocess

    args = sys.argv[1:] if argv is None else argv
    done = subprocess.run([sys.executable, script, *args, *extra], capture_output=True, text=True, cwd=HERE)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{Path(script).name} {' '.join(extra)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def paired_difference(a, b) -> dict:
    """Per-image differences ``a − b`` in nats: their number, mean ± standard error, mean |·|."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {"images": len(d), "mean_diff_nats": float(d.mean()),
            "standard_error_nats": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None,
            "mean_abs_diff_nats": float(np.abs(d).mean())}


def write_result(name: str, result: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")

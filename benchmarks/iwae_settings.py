"""IWAE-K scoring throughput of vaeood under device settings, and what each does to the
estimates.

One model (the conv VAE of ``iwae_speed.py``, trained briefly) scores the same test
images with ``vaeood.inference.estimators.iwae`` (chunk bound as ``score`` sets it) under:

* ``fp32``: PyTorch's defaults (on CUDA: cuDNN convolutions may use TF32);
* ``tf32_off``: strict fp32 everywhere (``allow_tf32 = False`` for cuDNN and matmul);
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark = True`` (kernel autotuning);
* ``channels_last``: the model's conv weights in NHWC;
* ``bf16``: the decoder under ``torch.autocast(bfloat16)`` (the log-likelihood sums stay
  fp32, ``VAE.log_likelihood``);
* combinations of these, joined by ``+``.

Every setting draws the same noise (same generator seed), so differences from ``fp32``
are numerics alone: the table gives their mean and maximum absolute value in nats.

    python benchmarks/iwae_settings.py --device cuda [--batch-sizes 200 1000] [--k 1000]
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common

SETTINGS = ["fp32", "tf32_off", "cudnn_benchmark", "channels_last", "channels_last+cudnn_benchmark", "bf16",
            "bf16+channels_last+cudnn_benchmark"]


@contextlib.contextmanager
def applied(setting: str, device: torch.device):
    """Backend flags of a setting, restored afterwards."""
    parts = set(setting.split("+"))
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = "cudnn_benchmark" in parts
    if "tf32_off" in parts:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in parts else contextlib.nullcontext()
    try:
        with autocast:
            yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def main(argv=None) -> dict:
    a = common.parser(__doc__, device="cuda", k=1000, batch_sizes=[200, 1000], reps=3, settings=list(SETTINGS),
                      train_images=20000, train_epochs=2).parse_args(argv)

    from vaeood.inference.estimators import iwae
    from vaeood.training.run import load_model
    from vaeood.features.model import memory_sized_options

    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = load_model(common.train_run(Path(tmp), a.device, a.train_images, a.train_epochs), a.device)
    x_all, data = common.load_images("fashion_mnist", "test", max(a.batch_sizes))
    x_all = x_all.to(device)
    rows, reference = {}, {}
    for b in a.batch_sizes:
        x = x_all[:b]
        for setting in a.settings:
            m = copy.deepcopy(model)
            if "channels_last" in setting.split("+"):
                m = m.to(memory_format=torch.channels_last)
            opts = memory_sized_options(iwae, device)

            def once():
                gen = torch.Generator(device=device).manual_seed(7)
                with torch.no_grad(), applied(setting, device):
                    out = iwae(m, x, k=a.k, generator=gen, **opts)["log_px_nats"]
                common.sync(device)
                return out

            once()  # warm-up (autotuning, allocator)
            times, out = [], None
            for _ in range(a.reps):
                start = time.perf_counter()
                out = once()
                times.append(time.perf_counter() - start)
            est = out.double().cpu().numpy()
            if setting == "fp32":
                reference[b] = est
            diff = est - reference[b] if b in reference else np.full_like(est, np.nan)
            rows[f"{setting} B={b}"] = {"setting": setting, "batch": b, "images_per_s": b / statistics.median(times),
                                        "seconds": times, "mean_log_px_nats": float(est.mean()),
                                        "mean_abs_diff_vs_fp32_nats": float(np.abs(diff).mean()),
                                        "max_abs_diff_vs_fp32_nats": float(np.abs(diff).max())}
            r = rows[f"{setting} B={b}"]
            print(f"{setting:40s} B={b:5d}: {r['images_per_s']:9.1f} images/s   |Δ| mean "
                  f"{r['mean_abs_diff_vs_fp32_nats']:.4f} max {r['max_abs_diff_vs_fp32_nats']:.4f} nats", flush=True)
    return common.finish("iwae_settings", {"machine": common.machine_info(a.device), "k": a.k, "data": data.source,
                                           "rows": rows, "chunk_options": memory_sized_options(iwae, device)}, a.out)


if __name__ == "__main__":
    main()

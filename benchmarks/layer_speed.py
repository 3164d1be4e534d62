"""Per-layer cost of the conv decoder (where IWAE scoring spends its time), in µs per
decoded sample, for the chunk sizes and kernels the IWAE prototypes compare:

* rows: decoded samples per call — ~20,000 is what ``iwae``'s default chunking gives
  for 28x28 images (``2**24`` elements of decoder output), 512 the prototype's chunk;
* layout: NCHW (as the library runs) vs channels_last (NHWC);
* kernel: oneDNN (PyTorch's default on CPU) vs PyTorch's native kernel (oneDNN disabled).

Layers: ``Linear(16 → 3136)``, ``ReLU``, ``ConvTranspose2d(64 → 32)`` 7→14, ``ReLU``,
``ConvTranspose2d(32 → 1)`` 14→28 (the Bernoulli decoder's output layer), and the
Bernoulli log-likelihood (BCE-with-logits) on its output. Variants alternate; median of
``--reps``.

    python benchmarks/layer_speed.py [--rows 512,20000] [--reps 9] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import common


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="512,20000")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    info = common.machine_info(a.device)
    torch.manual_seed(0)
    base, z_dim = common.BASE_CHANNELS, common.LATENT_DIM
    lin = nn.Linear(z_dim, 2 * base * 49).to(device)
    ct1 = nn.ConvTranspose2d(2 * base, base, 4, 2, 1).to(device)
    ct2 = nn.ConvTranspose2d(base, 1, 4, 2, 1).to(device)
    ct1_cl = nn.ConvTranspose2d(2 * base, base, 4, 2, 1).to(device).to(memory_format=torch.channels_last)
    ct2_cl = nn.ConvTranspose2d(base, 1, 4, 2, 1).to(device).to(memory_format=torch.channels_last)
    ct1_cl.load_state_dict(ct1.state_dict())
    ct2_cl.load_state_dict(ct2.state_dict())
    def no_onednn(fn):
        def run():
            with torch.backends.mkldnn.flags(enabled=False):
                return fn()
        return run

    results = {}
    with torch.no_grad():
        for rows in [int(r) for r in a.rows.split(",")]:
            z = torch.randn(rows, z_dim, device=device)
            h = torch.randn(rows, 2 * base, 7, 7, device=device)
            g = torch.randn(rows, base, 14, 14, device=device)
            hc, gc = h.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
            logits = torch.randn(rows, 1, 28, 28, device=device)
            target = torch.rand(rows, 1, 28, 28, device=device)
            variants = {
                "Linear(16→3136)": lambda: lin(z),
                "ReLU [rows,3136]": lambda: torch.relu(h),
                "ConvT(64→32) NCHW oneDNN": lambda: ct1(h),
                "ConvT(64→32) NHWC oneDNN": lambda: ct1_cl(hc),
                "ConvT(64→32) NCHW native": no_onednn(lambda: ct1(h)),
                "ReLU [rows,32,14,14]": lambda: torch.relu(g),
                "ConvT(32→1) NCHW oneDNN": lambda: ct2(g),
                "ConvT(32→1) NHWC oneDNN": lambda: ct2_cl(gc),
                "ConvT(32→1) NCHW native": no_onednn(lambda: ct2(g)),
                "BCE-with-logits [rows,1,28,28]": lambda: F.binary_cross_entropy_with_logits(logits, target, reduction="none"),
            }

            def timed(fn):
                def run():
                    fn()
                    common.sync(device)
                return run

            times = common.alternate({k: timed(v) for k, v in variants.items()}, a.reps)
            results[rows] = {k: 1e6 * statistics.median(v) / rows for k, v in times.items()}
            print(f"rows {rows}: " + "  ".join(f"{k} {v:.1f}" for k, v in results[rows].items()) + "  µs/sample")
    result = {"benchmark": "layer_speed", "command": common.command_line(), "machine": info,
              "us_per_sample": {str(k): v for k, v in results.items()}}
    path = common.write_result("layer_speed", result, a.out)
    print(f"→ {path}")
    return result


if __name__ == "__main__":
    main()

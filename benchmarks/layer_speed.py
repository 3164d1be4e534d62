"""Per-layer cost of the conv decoder (where IWAE scoring spends its time), in µs per
decoded sample: the evidence for the library's kernel and chunk choices.

* rows: decoded samples per call — 512 is about what ``iwae``'s CPU default chunking gives
  (``max_elements = 2**22`` of the decoder's allocations, ~410 pairs), 20,000 what a
  chunk bound of ``2**24`` elements of decoder output would give for 28x28 images;
* layout: NCHW vs channels_last (NHWC, the layout conv models are scored in);
* kernel: oneDNN (PyTorch's default on CPU) vs PyTorch's native kernel (oneDNN disabled,
  as ``OutputConvTranspose2d`` runs the one-channel output layer).

Layers: ``Linear(16 → 3136)``, ``ReLU``, ``ConvTranspose2d(64 → 32)`` 7→14, ``ReLU``,
``ConvTranspose2d(32 → 1)`` 14→28 (the Bernoulli decoder's output layer), and the
Bernoulli log-likelihood (BCE-with-logits) on its output. Variants alternate; median of
``--reps``.

    python benchmarks/layer_speed.py [--rows 512,20000] [--reps 9] [--device cpu]
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import common


def main(argv=None) -> dict:
    a = common.parser(__doc__, rows="512,20000", reps=9).parse_args(argv)
    device = torch.device(a.device)
    info = common.machine_info(a.device)
    torch.manual_seed(0)
    base, z_dim = common.BASE_CHANNELS, common.LATENT_DIM
    lin = nn.Linear(z_dim, 2 * base * 49).to(device)
    ct1 = nn.ConvTranspose2d(2 * base, base, 4, 2, 1).to(device)
    ct2 = nn.ConvTranspose2d(base, 1, 4, 2, 1).to(device)
    ct1_cl, ct2_cl = (copy.deepcopy(m).to(memory_format=torch.channels_last) for m in (ct1, ct2))

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
                "BCE-with-logits [rows,1,28,28]": lambda: F.binary_cross_entropy_with_logits(logits, target,
                                                                                             reduction="none"),
            }

            def timed(fn):
                def run():
                    fn()
                    common.sync(device)
                return run

            times = common.alternate({k: timed(v) for k, v in variants.items()}, a.reps)
            results[rows] = {k: 1e6 * statistics.median(v) / rows for k, v in times.items()}
            print(f"rows {rows}: " + "  ".join(f"{k} {v:.1f}" for k, v in results[rows].items()) + "  µs/sample")
    return common.finish("layer_speed", {"machine": info, "us_per_sample": {str(k): v for k, v in results.items()}},
                         a.out)


if __name__ == "__main__":
    main()

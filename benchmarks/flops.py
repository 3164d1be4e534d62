"""FLOPs per image of each workload, counted by ``torch.utils.flop_counter.FlopCounterMode``
(matmul and convolution FLOPs, forward and backward; element-wise ops are not counted),
and this machine's measured fp32 matmul peak.

Workloads (same conv VAE, 28x28):

* ``train_step``: one training step's forward + backward per image (batch 128; bare loop
  and vaeood.training.train run the same network, so the same FLOPs);
* ``elbo``: one encode + one decode per image;
* ``iwae_vaeood``: one encode + K decodes per image (``vaeood.inference.estimators.iwae``);
* ``iwae_pythae``: K encodes + K decodes per image (``get_nll`` re-encodes a copy of the
  image for every sample).

Peak: the best GFLOP/s of ``--reps`` timings of ``--mm-repeat`` fp32 ``torch.mm`` of
``--mm-size``² matrices, on all of torch's threads (best rather than median: a peak, and
the machine is shared). On CPUs also the same GEMM through oneDNN (``torch.utils.mkldnn``
linear layer): torch.mm goes to MKL, whose sgemm takes its AVX2 path on AMD CPUs, while
oneDNN — which runs PyTorch's convolutions — uses AVX-512 there, so on such a machine the
convolutions can beat the "torch.mm peak". ``run_all.py`` divides each workload's
measured throughput x FLOPs/image by both.

    python benchmarks/flops.py [--k 1000] [--mm-size 2048] [--device cpu]
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import common


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_image(k: int = 1000, device="cpu") -> dict[str, float]:
    """FLOPs per image of each workload (see the module docstring)."""
    from vaeood.inference.estimators import elbo, iwae

    device = torch.device(device)
    model = common.vaeood_model(0).to(device)
    x = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, device=device)

    def train_step():
        common.bare_neg_elbo(model.encoder, model.decoder, x).mean().backward()

    per_image = {"train_step": count(train_step) / len(x)}
    model.eval()
    with torch.no_grad():
        per_image["elbo"] = count(lambda: elbo(model, x)) / len(x)
        xs = x[:2]
        per_image["iwae_vaeood"] = count(lambda: iwae(model, xs, k=k)) / len(xs)
        twin = common.pythae_twin(model).eval()
        per_image["iwae_pythae"] = count(lambda: twin.get_nll(xs[:1].float() / 255.0, n_samples=k, batch_size=k))
    return per_image


def main(argv=None) -> dict:
    a = common.parser(__doc__, k=1000, mm_size=2048, mm_repeat=10, reps=7).parse_args(argv)
    device = torch.device(a.device)
    info = common.machine_info(a.device)
    per_image = flops_per_image(a.k, device)
    x, y = torch.randn(a.mm_size, a.mm_size, device=device), torch.randn(a.mm_size, a.mm_size, device=device)
    peak = common.gemm_gflops(lambda: torch.mm(x, y), a.mm_size, a.mm_repeat, a.reps, device)
    onednn = common.onednn_peak_gflops(a.mm_size, a.mm_repeat, a.reps) if device.type == "cpu" else None
    one = (f"fp32 oneDNN GEMM: best {onednn['max']:.1f} GFLOP/s (median {onednn['median']:.1f})"
           if onednn and "max" in onednn else "")
    return common.finish("flops", {
        "machine": info, "k": a.k, "flops_per_image": per_image, "matmul_peak_gflops": peak,
        "onednn_gemm_peak_gflops": onednn,
        "matmul": {"size": a.mm_size, "repeat": a.mm_repeat, "reps": a.reps, "dtype": "float32"}}, a.out,
        "MFLOP/image: " + "  ".join(f"{k} {v / 1e6:.1f}" for k, v in per_image.items()),
        f"fp32 torch.mm: best {peak['max']:.1f} GFLOP/s (median {peak['median']:.1f})", one)


if __name__ == "__main__":
    main()

"""Correctness on a GPU: the same small run's numbers on the CPU and on CUDA.

1. **Same weights, deterministic quantities.** A model trained on the CPU is loaded on
   both devices; on the same test images compare the posterior (mu, log-variance), the
   decoder log-likelihood log p(x|z) at the same z, and the ELBO with z at the posterior
   mean (no noise). Relative differences are float32 rounding unless the GPU uses
   TF32 (PyTorch lets cuDNN convolutions use TF32 by default), so the comparison is made
   with TF32 on (the default) and off.
2. **Same weights, Monte-Carlo estimates.** ``vaeood.evaluation.log_px.log_px`` with IWAE-K on both
   devices (each device draws its own noise): the per-image differences must average to
   zero within their standard error, and be of the size of the Monte-Carlo error.
3. **Training.** The same config trained on both devices (same seed and data order;
   the reparameterisation noise differs): the per-epoch training losses and the test
   ELBO of the two models, relative difference.

    python benchmarks/gpu_agreement.py --device cuda [--likelihood dlogistic] [--dataset cifar10]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

import common


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def deterministic(model_cpu, model_gpu, x_uint8: torch.Tensor, device) -> dict:
    """Posterior, log p(x|z) at shared z, and ELBO at z = mu on both devices."""
    from vaeood.inference.gaussian import kl_to_standard_normal

    with torch.no_grad():
        mu_c, lv_c = model_cpu.posterior(x_uint8)
        mu_g, lv_g = model_gpu.posterior(x_uint8.to(device))
        z = (mu_c + torch.randn(mu_c.shape, generator=torch.Generator().manual_seed(0)) * (0.5 * lv_c).exp())[None]
        ll_c = model_cpu.log_likelihood(x_uint8, z)[0]
        ll_g = model_gpu.log_likelihood(x_uint8.to(device), z.to(device))[0]
        elbo_c = model_cpu.log_likelihood(x_uint8, mu_c[None])[0] - kl_to_standard_normal(mu_c, lv_c)
        elbo_g = model_gpu.log_likelihood(x_uint8.to(device), mu_g[None])[0] - kl_to_standard_normal(mu_g, lv_g)
    return {"posterior_mu_rel": rel(mu_g, mu_c), "posterior_logvar_rel": rel(lv_g, lv_c),
            "log_lik_rel": rel(ll_g, ll_c), "log_lik_max_abs_nats": float((ll_g.cpu() - ll_c).abs().max()),
            "elbo_at_mean_rel": rel(elbo_g, elbo_c),
            "elbo_at_mean_max_abs_nats": float((elbo_g.cpu() - elbo_c).abs().max())}


def compare(case: str, a, tmp: Path) -> dict:
    """All three comparisons for one ``DATASET/LIKELIHOOD`` case."""
    from vaeood.training.config import Config
    from vaeood.training.run import load_model
    from vaeood.evaluation.log_px import log_px
    from vaeood.training.train import train

    dataset, likelihood = case.split("/")
    base = {"data.name": dataset, "data.limit": str(a.train_images), "data.allow_sample": "true",
            "train.epochs": str(a.epochs), "model.likelihood": likelihood}
    out: dict = {"config": base}
    sides = {"cpu": "cpu", "gpu": a.device}  # "gpu": the device under test
    runs = {label: train(Config().override({**base, "train.device": dev}), tmp / case.replace("/", "_") / label,
                         data_dir=common.data_dir(), progress=False)
            for label, dev in sides.items()}
    x, data = common.load_images(dataset, "test", a.test_images)
    out["data"] = data.source

    # 1. same weights (the CPU-trained model), deterministic quantities
    model_cpu, _, _ = load_model(runs["cpu"], "cpu")
    model_gpu, _, _ = load_model(runs["cpu"], a.device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    out["tf32_defaults"] = {"cudnn.allow_tf32": tf32[0], "cuda.matmul.allow_tf32": tf32[1]}
    out["same_weights"] = {"tf32_default": deterministic(model_cpu, model_gpu, x, torch.device(a.device))}
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out["same_weights"]["tf32_off"] = deterministic(model_cpu, model_gpu, x, torch.device(a.device))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32

    # 2. same weights, IWAE-K through log_px() on each device (each draws its own noise)
    est = {label: log_px(runs["cpu"], dataset, "test", estimator="iwae", estimator_options={"k": a.k},
                         limit=a.test_images, device=dev, data_dir=common.data_dir(), allow_sample=True,
                         reuse=False, progress=False)
           for label, dev in sides.items()}
    out["iwae_same_weights"] = {
        **common.paired_difference(est["gpu"]["log_px_nats"], est["cpu"]["log_px_nats"]),
        "mean_log_px_nats": {label: float(e["log_px_nats"].mean()) for label, e in est.items()}}

    # 3. trained on each device: loss curves and the test ELBO of the two models
    hist = {label: [json.loads(line)["train_loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
            for label, r in runs.items()}
    elbos = {label: float(log_px(r, dataset, "test", estimator="elbo", limit=a.test_images, device="cpu",
                                 data_dir=common.data_dir(), allow_sample=True, reuse=False,
                                 progress=False)["log_px_nats"].mean())
             for label, r in runs.items()}
    out["training"] = {"train_loss_per_epoch": hist,
                       "train_loss_rel_diff_per_epoch": [abs(g - c) / abs(c)
                                                         for c, g in zip(hist["cpu"], hist["gpu"], strict=True)],
                       "test_elbo_mean_nats": elbos,
                       "test_elbo_rel_diff": abs(elbos["gpu"] - elbos["cpu"]) / abs(elbos["cpu"])}
    return out


def main(argv=None) -> dict:
    p = common.parser(__doc__, device="cuda", train_images=4000, epochs=3, test_images=500, k=100)
    p.add_argument("--cases", nargs="+", default=["fashion_mnist/bernoulli", "cifar10/dlogistic"],
                   help="DATASET/LIKELIHOOD pairs")
    a = p.parse_args(argv)

    out: dict = {"machine": common.machine_info(a.device), "k": a.k, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases:
            out["cases"][case] = compare(case, a, Path(tmp))
            print(case, json.dumps({k: out["cases"][case][k] for k in ("same_weights", "iwae_same_weights",
                                                                       "training")},
                                   indent=1), flush=True)
    return common.finish("gpu_agreement", out, a.out)


if __name__ == "__main__":
    main()

"""Does ``train.precision=bf16`` train the same model? Speed and test-set quality of
fp32 and bf16 training, side by side.

Each decoder of Fig. 2a (the study's Bernoulli, the discretised logistic) is trained
twice with the same seed and data, ``train.precision=fp32`` and ``bf16`` (autocast of
convolutions and linear layers; the log-likelihood sums stay fp32), then both models
score the Fashion-MNIST and MNIST test sets with the ELBO in fp32. Reported: training
images/s per epoch, test mean log p(x) (and bits/dim for the normalised decoder), the
mean per-image difference bf16 − fp32 with its standard error, and the AUROC of
MNIST against Fashion-MNIST. Two seeds of fp32 give the run-to-run spread to compare
the bf16 − fp32 difference with.

    python benchmarks/precision_quality.py [--images 30000] [--epochs 8] [--device cpu]
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np

import common


def main(argv=None) -> dict:
    a = common.parser(__doc__, images=30000, epochs=8, test_images=10000,
                      decoders="bernoulli,dlogistic").parse_args(argv)

    from vaeood.training.config import Config
    from vaeood.evaluation.metrics import ood_metrics
    from vaeood.evaluation.log_px import log_px
    from vaeood.training.train import train

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for decoder in a.decoders.split(","):
            scores = {}
            for label, precision, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32_seed1", "fp32", 1)):
                cfg = Config().override({"data.limit": str(a.images), "train.epochs": str(a.epochs),
                                         "train.precision": precision, "train.seed": str(seed),
                                         "train.device": a.device, "model.likelihood": decoder,
                                         "data.allow_sample": "true"})
                run = train(cfg, Path(tmp) / f"{decoder}_{label}", data_dir=common.data_dir(), progress=False)
                history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                per = {ds: log_px(run, ds, "test", limit=a.test_images, device=a.device, data_dir=common.data_dir(),
                                  allow_sample=True, progress=False)
                       for ds in ("fashion_mnist", "mnist")}
                scores[label] = per
                m = ood_metrics(-per["fashion_mnist"]["log_px_nats"], -per["mnist"]["log_px_nats"])
                rows[f"{decoder}/{label}"] = {
                    "decoder": decoder, "precision": precision, "seed": seed,
                    "train_images_per_s_median_epoch": statistics.median(r["images_per_s"] for r in history),
                    "final_train_loss_nats": history[-1]["train_loss"],
                    **{f"test_{ds}_mean_log_px_nats": float(s["log_px_nats"].mean()) for ds, s in per.items()},
                    **({f"test_{ds}_mean_bpd": float(s["bpd"].mean())
                        for ds, s in per.items()} if "bpd" in per["mnist"] else {}),
                    "auroc_mnist_vs_fashion_mnist": m["auroc"]}
                print(f"{decoder}/{label}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in rows[f"{decoder}/{label}"].items()), flush=True)
            for other in ("bf16", "fp32_seed1"):
                d = scores[other]["fashion_mnist"]["log_px_nats"] - scores["fp32"]["fashion_mnist"]["log_px_nats"]
                rows[f"{decoder}/{other}"]["fashion_mnist_diff_vs_fp32_nats"] = {
                    "mean": float(d.mean()), "standard_error": float(d.std(ddof=1) / math.sqrt(len(d))),
                    "mean_abs": float(np.abs(d).mean())}
    return common.finish("precision_quality", {"machine": common.machine_info(a.device), "images": a.images,
                                                "epochs": a.epochs, "rows": rows}, a.out)


if __name__ == "__main__":
    main()

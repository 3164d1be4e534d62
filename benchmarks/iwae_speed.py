"""IWAE-K scoring throughput: vaeood's batched estimator against pythae's ``VAE.get_nll``,
on the same network with the same weights, and a check that both estimate the same thing.

The model: vaeood's conv VAE (base 32, latent 16, Bernoulli decoder on grey levels),
trained briefly with ``vaeood.train`` on Fashion-MNIST so the estimates are those of a
real model, then wrapped into a pythae ``VAE`` (``common.pythae_twin``: pythae encoder /
decoder classes around copies of the same modules).

Competitors, run in alternation, each on the same images of round r (a fresh slice of
the Fashion-MNIST test set per round), all under ``torch.no_grad()``:

* ``vaeood``: ``vaeood.estimators.iwae(model, x, k=K)`` on batches of ``--batch-size``
  images, as ``vaeood.scoring.score`` calls it (its default chunking: K samples decoded in
  chunks of ``max_elements // (B * elements_per_sample)``);
* ``vaeood_chunks``: the same with ``chunk_size`` giving ~512 decoded (image, sample) pairs
  per chunk (``prototypes.small_chunk_size``) instead of the default ~20,000;
* ``vaeood_proposed``: small chunks and ``prototypes.optimised_copy(model)`` (channels_last,
  oneDNN-free output deconvolution, in-place ReLU) — library changes this benchmark
  proposes (see ``prototypes.py``); same weights, same estimates up to float rounding;
* ``pythae_onebatch`` / ``pythae_bs100``: ``get_nll(x_i, n_samples=K, batch_size=K or 100)``,
  called once per image (get_nll loops over images itself and returns only their mean,
  so a per-image call costs the same and yields per-image values). 100 is pythae's
  default batch size, ``batch_size=K`` puts all K samples in one batch per image; the
  goal ratio is taken against the faster of the two. Note that get_nll draws ``batch_size`` samples when
  ``n_samples <= batch_size`` and ``floor(n_samples / batch_size) * batch_size``
  otherwise, so batch_size must divide K for it to compute IWAE-K.

pythae's estimate re-encodes the image for every batch of samples, so it does about twice
the FLOPs of vaeood for the same K (see ``flops.py``).

    python benchmarks/iwae_speed.py [--k 1000] [--images 20] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common
from prototypes import optimised_copy, small_chunk_size


def train_model(device: str, images: int, epochs: int, out_dir: Path) -> Path:
    from vaeood.config import Config
    from vaeood.train import train

    cfg = Config().override({
        "train.epochs": str(epochs), "train.batch_size": "128", "train.device": device,
        "model.base_channels": str(common.BASE_CHANNELS), "model.latent_dim": str(common.LATENT_DIM),
        "data.limit": str(images), "data.allow_sample": "true",
    })
    return train(cfg, out_dir / "run", data_dir=common.data_dir(), progress=False)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--images", type=int, default=20, help="images per round for vaeood and pythae_onebatch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1000, help="vaeood images per iwae call (score's default)")
    p.add_argument("--slow-divisor", type=int, default=1,
                   help="pythae_bs100 scores images/slow-divisor per round (to shorten runs where it is slow)")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    from vaeood.estimators import iwae
    from vaeood.run import load_model
    from vaeood.scoring import memory_sized_options

    common.quiet_pythae()
    device = torch.device(a.device)
    info = common.machine_info(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_model(a.device, a.train_images, a.train_epochs, Path(tmp))
        train_seconds = time.perf_counter() - t0
        model, _, _ = load_model(run, a.device)
    model.eval()
    proposed = optimised_copy(model).eval()
    twin = common.pythae_twin(model).eval()

    need = a.images * (a.rounds + 1)
    x_all, data = common.load_images("fashion_mnist", "test", need)
    x_all = x_all.to(device)
    if len(x_all) < need:
        raise SystemExit(f"need {need} test images, have {len(x_all)}")
    n_slow = max(1, a.images // a.slow_divisor)

    per_image: dict[str, list[np.ndarray]] = {
        k: [] for k in ("vaeood", "vaeood_chunks", "vaeood_proposed", "pythae_onebatch", "pythae_bs100")}
    state = {"round": 0}

    def images_of_round(n):
        r = state["round"]
        return x_all[r * a.images: r * a.images + n]

    def vaeood_fn(m, key, small_chunks=False):
        def run():
            x = images_of_round(a.images)
            torch.manual_seed(1000 + state["round"])
            outs = []
            with torch.no_grad():
                for i in range(0, len(x), a.batch_size):
                    xb = x[i: i + a.batch_size]
                    # small chunks are a CPU cache remedy; on a GPU the default (large) chunks stay
                    chunk = small_chunk_size(a.k, len(xb)) if small_chunks and device.type == "cpu" else None
                    # as score() calls it: on a GPU the chunk bound is sized from free memory
                    sized = {} if chunk else memory_sized_options(iwae, device)
                    outs.append(iwae(m, xb, k=a.k, chunk_size=chunk, **sized)["log_px_nats"])
                common.sync(device)
            if state["round"] > 0:
                per_image[key].append(torch.cat(outs).double().cpu().numpy())
        return run

    def pythae_fn(bs, n, key):
        def run():
            x = images_of_round(n).float() / 255.0
            torch.manual_seed(2000 + 100 * bs + state["round"])
            vals = []
            with torch.no_grad():
                for i in range(len(x)):
                    vals.append(twin.get_nll(x[i: i + 1], n_samples=a.k, batch_size=bs))
                common.sync(device)
            if state["round"] > 0:
                per_image[key].append(np.asarray(vals, dtype=np.float64))
        return run

    competitors = {
        "vaeood": vaeood_fn(model, "vaeood"),
        "vaeood_chunks": vaeood_fn(model, "vaeood_chunks", small_chunks=True),
        "vaeood_proposed": vaeood_fn(proposed, "vaeood_proposed", small_chunks=True),
        "pythae_onebatch": pythae_fn(a.k, a.images, "pythae_onebatch"),
        "pythae_bs100": pythae_fn(min(100, a.k), n_slow, "pythae_bs100"),
    }
    work = {"vaeood": a.images, "vaeood_chunks": a.images, "vaeood_proposed": a.images,
            "pythae_onebatch": a.images, "pythae_bs100": n_slow}

    # warm-up on round 0's images (not recorded), then rounds 1..R
    for fn in competitors.values():
        fn()
    times = {n: [] for n in competitors}
    names = list(competitors)
    peaks = []
    for r in range(a.rounds):
        state["round"] = r + 1
        peaks.append(common.peak_probe(device))
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            competitors[name]()
            times[name].append(time.perf_counter() - start)
    summary = common.summarise(times, work)
    from flops import flops_per_image

    fpi = flops_per_image(a.k, device)
    summary["flops_per_image"] = {n: fpi["iwae_pythae" if n.startswith("pythae") else "iwae_vaeood"] for n in names}
    summary["fraction_of_peak"] = {n: common.fraction_of_peak(times[n], work[n] * summary["flops_per_image"][n], peaks)
                                   for n in names}
    summary["peaks_per_round_gflops"] = peaks

    # agreement: the same images under vaeood and pythae (independent noise)
    agreement = {}
    v = np.concatenate(per_image["vaeood"])
    for key in ("vaeood_chunks", "vaeood_proposed", "pythae_onebatch", "pythae_bs100"):
        other = np.concatenate(per_image[key])
        if key == "pythae_bs100":  # first n_slow images of each round
            ref = np.concatenate([chunk[:n_slow] for chunk in per_image["vaeood"]])
        else:
            ref = v
        diff = other - ref
        agreement[f"{key}-vaeood"] = {
            "images": len(diff), "mean_diff_nats": float(diff.mean()),
            "standard_error_nats": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None,
            "mean_abs_diff_nats": float(np.abs(diff).mean()),
            "mean_log_px_nats": {key: float(other.mean()), "vaeood": float(ref.mean())},
        }
    result = {
        "benchmark": "iwae_speed", "command": common.command_line(), "machine": info,
        "data": data.source, "k": a.k, "images_per_round": work, "rounds": a.rounds,
        "vaeood_batch_size": a.batch_size, "model": {"arch": "conv", "base_channels": common.BASE_CHANNELS,
        "latent_dim": common.LATENT_DIM, "likelihood": "bernoulli", "trained_on": f"{a.train_images} images x {a.train_epochs} epochs",
        "train_seconds": train_seconds},
        **summary, "agreement": agreement,
        "goal": "vaeood >= 1.5x pythae (its faster measured batch size) on 2 CPU cores (issue 3/5)",
    }
    ips = result["images_per_s"]
    best = max(("pythae_onebatch", "pythae_bs100"), key=lambda k: ips[k])
    result["pythae_best"] = best
    result["goal_ratio"] = {side: result["ratios"][f"{side}/{best}"] for side in ("vaeood", "vaeood_chunks", "vaeood_proposed")}
    result["goal_met"] = result["goal_ratio"]["vaeood"] >= 1.5
    path = common.write_result("iwae_speed", result, a.out)
    print(f"IWAE-{a.k} images/s: " + "  ".join(f"{k} {v:.2f}" for k, v in ips.items()))
    print(f"÷ {best}: " + "  ".join(f"{k} {v:.2f}" for k, v in result["goal_ratio"].items()))
    for k, g in agreement.items():
        print(f"agreement {k}: mean diff {g['mean_diff_nats']:+.3f} ± {g['standard_error_nats'] or float('nan'):.3f} nats "
              f"over {g['images']} images")
    print(f"→ {path}")
    return result


if __name__ == "__main__":
    main()

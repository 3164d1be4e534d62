"""IWAE-K scoring throughput: vaeood's batched estimator against pythae's ``VAE.get_nll``,
on the same network with the same weights, and a check that both estimate the same thing.

The model: vaeood's conv VAE (base 32, latent 16, Bernoulli decoder on grey levels),
trained briefly with ``vaeood.training.train`` on Fashion-MNIST so the estimates are those of a
real model, then wrapped into a pythae ``VAE`` (``common.pythae_twin``: pythae encoder /
decoder classes around copies of the same modules).

Competitors, run in alternation, each on the same images of round r (a fresh slice of
the Fashion-MNIST test set per round), all under ``torch.no_grad()``:

* ``vaeood``: ``vaeood.inference.estimators.iwae(model, x, k=K)`` on batches of ``--batch-size``
  images, as ``vaeood.evaluation.log_px.log_px`` calls it (its default chunking: K samples decoded in
  chunks of ``max_elements // (B * elements_per_sample)``);
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

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common


def main(argv=None) -> dict:
    p = common.parser(__doc__, k=(1000, "importance samples per image"),
                      images=(20, "images per round for vaeood and pythae_onebatch"), rounds=5,
                      batch_size=(1000, "vaeood images per iwae call (score's default)"),
                      train_images=20000, train_epochs=2)
    p.add_argument("--slow-divisor", type=int, default=1,
                   help="pythae_bs100 scores images/slow-divisor per round (to shorten runs where it is slow)")
    a = p.parse_args(argv)

    from vaeood.inference.estimators import iwae
    from vaeood.training.run import load_model
    from vaeood.features.model import memory_sized_options

    common.quiet_pythae()
    device = torch.device(a.device)
    info = common.machine_info(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = common.train_run(Path(tmp), a.device, a.train_images, a.train_epochs)
        train_seconds = time.perf_counter() - t0
        model, _, _ = load_model(run, a.device)
    model.eval()
    twin = common.pythae_twin(model).eval()

    need = a.images * (a.rounds + 1)
    x_all, data = common.load_images("fashion_mnist", "test", need)
    x_all = x_all.to(device)
    if len(x_all) < need:
        raise SystemExit(f"need {need} test images, have {len(x_all)}")
    n_slow = max(1, a.images // a.slow_divisor)

    per_image: dict[str, list[np.ndarray]] = {k: [] for k in ("vaeood", "pythae_onebatch", "pythae_bs100")}
    state = {"round": 0}

    def images_of_round(n):
        r = state["round"]
        return x_all[r * a.images: r * a.images + n]

    def vaeood():
        x = images_of_round(a.images)
        torch.manual_seed(1000 + state["round"])
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), a.batch_size):
                xb = x[i: i + a.batch_size]  # chunk bound as score() sets it (on a GPU: from free memory)
                outs.append(iwae(model, xb, k=a.k, **memory_sized_options(iwae, device))["log_px_nats"])
            common.sync(device)
        if state["round"] > 0:
            per_image["vaeood"].append(torch.cat(outs).double().cpu().numpy())

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
        "vaeood": vaeood,
        "pythae_onebatch": pythae_fn(a.k, a.images, "pythae_onebatch"),
        "pythae_bs100": pythae_fn(min(100, a.k), n_slow, "pythae_bs100"),
    }
    work = {"vaeood": a.images, "pythae_onebatch": a.images, "pythae_bs100": n_slow}

    # warm-up on round 0's images (not recorded), then rounds 1..R, each on fresh images
    peaks = []
    times = common.alternate(competitors, a.rounds, peaks=peaks, device=device,
                             on_round=lambda r: state.update(round=r + 1))
    names = list(competitors)
    summary = common.summarise(times, work)
    from flops import flops_per_image

    fpi = flops_per_image(a.k, device)
    summary["flops_per_image"] = {n: fpi["iwae_pythae" if n.startswith("pythae") else "iwae_vaeood"] for n in names}
    summary.update(common.peak_fractions(times, {n: work[n] * summary["flops_per_image"][n] for n in names}, peaks))

    # agreement: the same images under vaeood and pythae (independent noise)
    agreement = {}
    for key, n in (("pythae_onebatch", a.images), ("pythae_bs100", n_slow)):
        other = np.concatenate(per_image[key])
        ref = np.concatenate([chunk[:n] for chunk in per_image["vaeood"]])  # the first n images of each round
        agreement[f"{key}-vaeood"] = {**common.paired_difference(other, ref),
                                      "mean_log_px_nats": {key: float(other.mean()), "vaeood": float(ref.mean())}}
    result = {
        "machine": info, "data": data.source, "k": a.k, "images_per_round": work, "rounds": a.rounds,
        "vaeood_batch_size": a.batch_size, "model": {"arch": "conv", "base_channels": common.BASE_CHANNELS,
        "latent_dim": common.LATENT_DIM, "likelihood": "bernoulli",
        "trained_on": f"{a.train_images} images x {a.train_epochs} epochs",
        "train_seconds": train_seconds},
        **summary, "agreement": agreement,
    }
    ips = result["images_per_s"]
    best = max(("pythae_onebatch", "pythae_bs100"), key=lambda k: ips[k])
    result["pythae_best"] = best
    result["goal_ratio"] = {"vaeood": result["ratios"][f"vaeood/{best}"]}  # the goal: ≥ 1.5 on 2 CPU cores
    return common.finish("iwae_speed", result, a.out,
                         f"IWAE-{a.k} images/s: " + "  ".join(f"{k} {v:.2f}" for k, v in ips.items()),
                         f"vaeood ÷ {best}: {result['goal_ratio']['vaeood']:.2f}",
                         *(f"agreement {k}: mean diff {g['mean_diff_nats']:+.3f} ± "
                           f"{g['standard_error_nats'] or float('nan'):.3f} nats over {g['images']} images"
                           for k, g in agreement.items()))


if __name__ == "__main__":
    main()

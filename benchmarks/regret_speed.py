"""Likelihood regret: vaeood's batched ``likelihood_regret`` against a faithful
re-implementation of the official per-image loop (Xiao, Yan & Amit 2020,
github.com/XavierXiao/Likelihood-Regret ``compute_LR.py``), on the same trained model:
speed (images/s) and Fashion-MNIST → MNIST AUROC side by side, with bootstrap 95% CIs.

The faithful loop, one image at a time (as the official code, with vaeood's IWAE for the
NLLs — which is at least as fast as the official 5 × 200 repeated-image batches):

1. NLL before: ``-iwae(model, x_i, k=1000)``;
2. a deep copy of the encoder in eval mode; Adam(lr 2e-4, betas (0.9, 0.999),
   weight_decay 5e-5); 100 steps on the single-sample negative ELBO of x_i (closed-form
   KL), the decoder fixed;
3. NLL after with the copied encoder, 1000 importance samples; regret = before - after.

Modes:

* default: the loop on ``--loop-images`` images per set (or its results of an earlier run
  on the same checkpoint, ``--loop-cache``) against the batched regret on ``--images``
  (a superset), compared on the loop's images with a paired bootstrap; ``--loop-retime N``
  times the loop afresh on N images per set, half before and half after the batched
  timings; ``--faithful-check N`` also runs the paper's whole-encoder variant, batched,
  on N loop images per set and correlates it with the loop;
* ``--sweep``: AUROC and images/s of the batched settings on *tuning* images the
  comparison never uses (Fashion-MNIST training images after ``data.limit``, never trained
  on, and MNIST training images), to choose the defaults.

    PYTHONPATH=src python benchmarks/regret_speed.py --run RUN --images 400 --loop-images 200 \
        --loop-retime 6 --loop-cache LOOP_CACHE.json          # results/regret_speed.json
    PYTHONPATH=src python benchmarks/regret_speed.py --run RUN --sweep --settings JSON    # a list of options
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import common
from vaeood.data import load_dataset
from vaeood.inference.estimators import elbo, iwae
from vaeood.evaluation.intervals import auroc
from vaeood.inference.regret import likelihood_regret
from vaeood.training.run import load_model, to_tensor


# -- the faithful per-image loop ----------------------------------------------------------------
class _EncoderCopy:
    """The model with another encoder: ``posterior`` as ``VAE.posterior``, the rest delegated."""

    def __init__(self, model, encoder):
        self.model, self.encoder = model, encoder

    def posterior(self, x):
        h = self.encoder(x.float() / 255.0).float()
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def __getattr__(self, name):  # log_likelihood, log_prior, elements_per_sample
        return getattr(self.model, name)


def faithful_regret(model, x1, generator, k=1000, steps=100, lr=2e-4, weight_decay=5e-5):
    """Official loop on one image ``x1 [1, C, H, W]``: (regret, nll_before, nll_after) in nats."""
    with torch.no_grad():
        nll_before = -iwae(model, x1, k=k, generator=generator)["log_px_nats"].item()
    enc = copy.deepcopy(model.encoder)
    enc.eval()
    copied = _EncoderCopy(model, enc)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    for _ in range(steps):
        loss = -elbo(copied, x1, samples=1, generator=generator)["log_px_nats"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll_after = -iwae(copied, x1, k=k, generator=generator)["log_px_nats"].item()
    return nll_before - nll_after, nll_before, nll_after


# -- intervals (the percentile bootstrap these results were made with) --------------------------
def bootstrap_ci(s_in, s_ood, reps=2000, seed=0):
    """Percentile 95% CI of the AUROC, resampling each set with replacement."""
    rng = np.random.default_rng(seed)
    s_in, s_ood = np.asarray(s_in, float), np.asarray(s_ood, float)
    vals = [auroc(s_in[rng.integers(0, len(s_in), len(s_in))], s_ood[rng.integers(0, len(s_ood), len(s_ood))])
            for _ in range(reps)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def paired_bootstrap_diff(a_in, a_ood, b_in, b_ood, reps=2000, seed=0):
    """AUROC(a) - AUROC(b) on the same images, resampled jointly: (diff, 95% CI)."""
    rng = np.random.default_rng(seed)
    a_in, a_ood, b_in, b_ood = (np.asarray(v, float) for v in (a_in, a_ood, b_in, b_ood))
    diffs = []
    for _ in range(reps):
        i = rng.integers(0, len(a_in), len(a_in))
        o = rng.integers(0, len(a_ood), len(a_ood))
        diffs.append(auroc(a_in[i], a_ood[o]) - auroc(b_in[i], b_ood[o]))
    interval = [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]
    return auroc(a_in, a_ood) - auroc(b_in, b_ood), interval


def summary(s_in, s_ood) -> dict:
    return {"auroc": auroc(s_in, s_ood), "auroc_ci95": bootstrap_ci(s_in, s_ood), "n_in": len(s_in),
            "n_ood": len(s_ood)}


# -- helpers ------------------------------------------------------------------------------------------
def images(name, split, data_dir, start, count):
    ds = load_dataset(name, split, data_dir=data_dir)
    return to_tensor(ds.images[start:start + count]), {"dataset": name, "split": split, "start": start,
                                                        "count": count, "file": Path(str(ds.source).split()[0]).name}


def timed_regret(model, x, seed, **options):
    start = time.perf_counter()
    out = likelihood_regret(model, x, generator=torch.Generator().manual_seed(seed), **options)
    return out, time.perf_counter() - start


def run_sweep(model, args, data_dir, base):
    limit = base["config"]["data"]["limit"] or 0
    x_in, src_in = images("fashion_mnist", "train", data_dir, max(limit, 50000), args.tune_images)
    x_ood, src_ood = images("mnist", "train", data_dir, 0, args.tune_images)
    x = torch.cat([x_in, x_ood])
    n = len(x_in)
    settings = json.loads(args.settings)  # e.g. '[{"variant": "head", "steps": 5, "lr": 1e-3, "k": 8}]'
    from vaeood.inference.regret import feature_scale
    l1 = feature_scale(model, x, model.latent_dim)[:, 0].numpy()
    print(json.dumps({"auroc_of_feature_l1_norm": auroc(l1[:n], l1[n:])}), flush=True)
    rows = []
    for s in settings:
        out, seconds = timed_regret(model, x, args.seed, **s)
        r = out["regret_nats"].numpy()
        row = {"options": s, "images_per_s": len(x) / seconds, "seconds": seconds,
               "auroc": auroc(r[:n], r[n:]), "auroc_ci95": bootstrap_ci(r[:n], r[n:], reps=500),
               "auroc_bound_before": auroc(-out["bound_before_nats"].numpy()[:n],
                                           -out["bound_before_nats"].numpy()[n:]),
               "mean_regret_in": float(r[:n].mean()), "mean_regret_ood": float(r[n:].mean()),
               "frac_negative": float((r < 0).mean())}
        row["auroc_x_images_per_s"] = row["auroc"] * row["images_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"mode": "sweep", "tuning_images": {"in": src_in, "ood": src_ood}, "rows": rows,
            "auroc_of_feature_l1_norm": auroc(l1[:n], l1[n:])}


def run_compare(model, args, data_dir, base):
    x_in, src_in = images("fashion_mnist", "test", data_dir, 0, args.images)
    x_ood, src_ood = images("mnist", "test", data_dir, 0, args.images)
    key = {"checkpoint_sha256": base["checkpoint_sha256"], "seed": args.seed}
    cache = {}
    if args.loop_cache and Path(args.loop_cache).exists():
        saved = json.loads(Path(args.loop_cache).read_text())
        if {k: saved.get(k) for k in key} == key:
            cache = saved["images"]
            print(f"reusing {len(cache)} loop results from {args.loop_cache}", flush=True)
    loop_seconds = []
    # interleaved, so whatever number finishes is balanced between the sets
    order = [(s, i) for i in range(args.loop_images) for s in ("in", "ood")]
    for s, i in order:
        name = f"{s}:{i}"
        if name in cache:
            continue
        x1 = (x_in if s == "in" else x_ood)[i:i + 1]
        g = torch.Generator().manual_seed(args.seed * 100003 + i * 2 + (s == "ood"))
        start = time.perf_counter()
        regret, before, after = faithful_regret(model, x1, g)
        seconds = time.perf_counter() - start
        cache[name] = {"regret": regret, "nll_before": before, "nll_after": after, "seconds": seconds,
                       "load_average": os.getloadavg()[0]}
        loop_seconds.append(seconds)
        print(f"loop {name}: regret {regret:.3f} nats, {seconds:.2f} s", flush=True)
        if args.loop_cache:
            Path(args.loop_cache).write_text(json.dumps({**key, "images": cache}))
    retimed = []

    def retime(indices):
        for i in indices:
            for s, xs in (("in", x_in), ("ood", x_ood)):
                g = torch.Generator().manual_seed(args.seed * 100003 + i * 2 + (s == "ood"))
                start = time.perf_counter()
                faithful_regret(model, xs[i:i + 1], g)
                retimed.append(time.perf_counter() - start)
                print(f"loop retime {s}:{i}: {retimed[-1]:.2f} s", flush=True)

    half = args.loop_retime // 2
    retime(range(half))  # the other half after the batched timings, against drifting load
    both = sorted(i for i in range(args.loop_images) if f"in:{i}" in cache and f"ood:{i}" in cache)
    loop_in = [cache[f"in:{i}"]["regret"] for i in both]
    loop_ood = [cache[f"ood:{i}"]["regret"] for i in both]
    all_seconds = retimed or [v["seconds"] for v in cache.values()]

    options = json.loads(args.options) if args.options else {}
    x = torch.cat([x_in, x_ood])
    out, seconds = timed_regret(model, x, args.seed, **options)
    # a second timing, the other way round (OOD first), against drifting load
    _, seconds2 = timed_regret(model, torch.cat([x_ood, x_in]), args.seed, **options)
    retime(range(half, args.loop_retime))
    all_seconds = retimed or all_seconds
    r = out["regret_nats"].numpy()
    b_in, b_ood = r[:len(x_in)], r[len(x_in):]
    batched_ips = len(x) / ((seconds + seconds2) / 2)  # mean of the two timings (the loop: median)
    loop_ips = 1.0 / float(np.median(all_seconds)) if all_seconds else None
    before = -out["bound_before_nats"].numpy()
    result = {
        "mode": "compare",
        "images": {"in": src_in, "ood": src_ood},
        "batched": {"options": options, "seconds": [seconds, seconds2], "images_per_s": batched_ips,
                    "regret": summary(b_in, b_ood),
                    "nll_bound_before": summary(before[:len(x_in)], before[len(x_in):]),
                    "regret_on_loop_images": summary(b_in[both], b_ood[both]) if both else None},
        "loop": {"images_timed": len(all_seconds), "timed_this_run": len(loop_seconds) + len(retimed),
                 "timing_from": "retimed in this run" if retimed else "per-image seconds of the loop results",
                 "median_seconds_per_image": float(np.median(all_seconds)) if all_seconds else None,
                 "images_per_s": loop_ips, "regret": summary(loop_in, loop_ood) if both else None,
                 "nll_before": summary([cache[f"in:{i}"]["nll_before"] for i in both],
                                       [cache[f"ood:{i}"]["nll_before"] for i in both]) if both else None,
                 "image_indices": both, "per_image": cache},
    }
    if both:
        diff, ci = paired_bootstrap_diff(b_in[both], b_ood[both], loop_in, loop_ood)
        result["batched_minus_loop_auroc_same_images"] = {"diff": diff, "ci95": ci}
    if loop_ips:
        result["speedup"] = batched_ips / loop_ips
    n_in = len(x_in)
    result["batched"]["fraction_zero"] = [float((b_in == 0).mean()), float((b_ood == 0).mean())]
    result["batched"]["other_seeds"] = {}
    for seed in args.extra_seeds:
        r_s = timed_regret(model, x, seed, **options)[0]["regret_nats"].numpy()
        result["batched"]["other_seeds"][seed] = {
            "auroc": auroc(r_s[:n_in], r_s[n_in:]),
            "fraction_zero": [float((r_s[:n_in] == 0).mean()), float((r_s[n_in:] == 0).mean())]}
    if args.faithful_check:
        # the paper's whole-encoder variant, batched with vmap (its defaults: 100 Adam steps of
        # 2e-4, weight decay 5e-5, IWAE-1000, last iterate), on the first loop images
        idx = both[:args.faithful_check]
        xf = torch.cat([x_in[idx], x_ood[idx]])
        out_f, sec_f = timed_regret(model, xf, args.seed, variant="encoder", batch_size=args.faithful_batch)
        rf = out_f["regret_nats"].numpy()
        loop_f = np.array([cache[f"in:{i}"]["regret"] for i in idx] + [cache[f"ood:{i}"]["regret"] for i in idx])
        result["faithful_variant"] = {
            "options": {"variant": "encoder", "batch_size": args.faithful_batch}, "images": len(xf),
            "seconds": sec_f, "images_per_s": len(xf) / sec_f,
            "regret": summary(rf[:len(idx)], rf[len(idx):]),
            "loop_regret_same_images": summary(loop_f[:len(idx)], loop_f[len(idx):]),
            "pearson_with_loop": float(np.corrcoef(rf, loop_f)[0, 1]),
            "mean_regret": [float(rf[:len(idx)].mean()), float(rf[len(idx):].mean())],
            "loop_mean_regret": [float(loop_f[:len(idx)].mean()), float(loop_f[len(idx):].mean())],
        }
    return result


def main(argv=None) -> dict:
    p = common.parser(__doc__, run=(None, "a vaeood run directory (trained on Fashion-MNIST)"),
                      images=(400, "images per set for the batched regret"),
                      loop_images=(60, "images per set for the faithful loop"),
                      loop_retime=(0, "time the loop afresh on this many cached images per set (images/s from these)"),
                      loop_cache=(None, "JSON file of per-image loop results to reuse/extend"),
                      options=(None, "JSON options for likelihood_regret (default: its defaults)"),
                      faithful_check=(0, "also run variant='encoder' (the paper's settings, batched) on this many "
                                         "loop images per set"), faithful_batch=20,
                      extra_seeds=("", "comma-separated seeds: the batched AUROC again with these noise seeds"),
                      sweep=False, settings=(None, "sweep: JSON list of option dicts"), tune_images=200, seed=0)
    args = p.parse_args(argv)
    if not args.run or (args.sweep and not args.settings):
        p.error("--run is required, and --settings with --sweep")
    args.extra_seeds = [int(t) for t in args.extra_seeds.split(",") if t]
    model, config, meta = load_model(args.run)
    model.eval()
    config = config.to_dict()
    config["data"].pop("data_dir", None)  # no absolute paths in results
    base = {"note": "2 CPU cores shared with other helpers' jobs; load averages recorded",
            "checkpoint_sha256": hashlib.sha256((Path(args.run) / "checkpoint.pt").read_bytes()).hexdigest(),
            "config": config, "epoch": meta.get("epoch"), "machine": common.machine_info()}
    data_dir = common.data_dir()
    result = run_sweep(model, args, data_dir, base) if args.sweep else run_compare(model, args, data_dir, base)
    name = "regret_sweep" if args.sweep else "regret_speed"
    hide = {args.run: "RUN", args.loop_cache: "LOOP_CACHE.json", args.out: f"{name}.json"}
    return common.finish(name, {**base, **result, "load_average_at_end": list(os.getloadavg())}, args.out,
                         hide={k: v for k, v in hide.items() if k})


if __name__ == "__main__":
    main()

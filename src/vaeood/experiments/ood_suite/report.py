"""``report.md`` of the suite: set-up, tables, decisions, figures and which detector to use."""

from __future__ import annotations

import numpy as np

from ...detectors import DETECTORS
from ...evaluation.report import markdown_table
from ..common import report_header
from .presets import SUITE_DETECTORS
from .report_parts import backbone_lines, default_table, photo_lines
from .summary import FAIL_BELOW, WEAK_BELOW, decision_summary, pm

def render_report(exp, out: dict) -> str:
    """``report.md`` of the suite ``exp`` (an :class:`.suite.OODSuite`; its title) from its ``out``."""
    families = out["families"]
    samples = [f"{k} ({d['source']})" for f in families.values() for k, d in f["data"].items() if d["is_sample"]]
    lines = report_header(exp.title, out, samples)
    s = out["settings"]
    lines += ["## Set-up", "",
              f"- Seeds: {', '.join(map(str, out['seeds']))} (each trains its own models; the tables give mean ± sd "
              "over seeds, sd with ddof = 1).",
              _models_line(s, families),
              "- Training budgets: " + "; ".join(f"{k}: " + ", ".join(f"`{a}={b}`" for a, b in v.items())
                                                  for k, v in s["train"].items() if k in families) + ".",
              f"- Log-likelihood estimator for `nll`, `bpd`, `complexity*`, `likelihood_ratio`, `typicality`: "
              f"{out['estimator']}{' ' + str(out['estimator_options']) if out['estimator_options'] else ''}; "
              "`dose` uses the ELBO's terms with one sample (the paper's statistics).",
              f"- Test images per set: {s['test_images_per_set'] or 'all'} (the first ones of each test split"
              + "".join(f"; {k}: {v}" for k, v in (s.get("test_images_per_family") or {}).items() if k in families)
              + "); "
              f"uniform-noise and constant images: {s['synthetic_images']} per image shape, generated with seed "
              f"{s['synthetic_seed']} (the same for every model).", ""]
    for f in families.values():
        fitted = next(iter(f["seeds"].values())).get("fitted") or {}
        if fitted:
            lines += [f"- {f['title']}: OOD images of another shape were conformed to the model ("
                      + "; ".join(f"{k}: {v}" for k, v in fitted.items()) + "); conforming changes the likelihood."]
    if any((next(iter(f["seeds"].values())).get("fitted") or {}) for f in families.values()):
        lines += [""]
    lines += backbone_lines(out) + photo_lines(out)
    lines += _report_detectors(out)
    lines += _report_aurocs(out)
    lines += _report_costs(out)
    lines += _report_closing(out)
    return "\n".join(lines)


def _models_line(settings: dict, families: dict) -> str:
    """The set-up's list of models: ``main`` and every model the detectors declare, with the
    overrides that train it from ``main``'s config and the detectors it is for."""
    first = next(iter(next(iter(families.values()))["seeds"].values())) if families else {}
    trained = {m for f in families.values() for r in f["seeds"].values() for m in r["training"]}
    models = []
    for name, m in settings["models"].items():
        if name != "main" and name in trained:
            changes = ", ".join(f"`{k}={v}`" for k, v in m["overrides"].items())
            users = ", ".join(f"`{d}` ({DETECTORS.get(d).paper})" if d in DETECTORS else f"`{d}`" for d in m["for"])
            models.append(f"`{name}` ({changes}) for {users}")
    head = (f"- Models per dataset and seed, trained on the same training set with the same budget: `main` (a conv VAE "
            f"with the discretised-logistic decoder, latent {first.get('latent_dim', '?')})")
    if not models:
        return head + ", no other (no detector run here declares one)."
    return (head + " and the models the detectors declare (`runs_on`, `companions`; docs/extending.md), each "
            "`main`'s config with these overrides: " + "; ".join(models) + ".")


CAVEATS = [
    "`dose_plus`'s three statistics were chosen on development runs of Fashion-MNIST → MNIST (the first 2,000 "
    "test images of each, one VAE at this preset's budget and one at fig2a quick's): its Fashion-MNIST → MNIST "
    "number is not out of sample; every other pair is.",
    "`likelihood_ratio`'s background model here is a VAE of the main model's configuration and budget (Ren et "
    "al. used PixelCNN models); its noise rate and L2 weight are the paper's range, not tuned.",
    "`fused` combines the best far-OOD and the best near-OOD evidence seen on a development Fashion-MNIST model "
    "(MNIST, noise, constant and rotated images), and `latent_knn`'s default (no L2 normalisation) was set after "
    "seeing the same development pairs: their Fashion-MNIST numbers are not out of sample. `fused`'s rule "
    "(Fisher's), folds and tail were fixed before any measurement; its fit reads held-out training images only.",
    "`feature_knn`, `feature_energy`, `feature_gaussian` and `fused_content` are not trained from scratch: their "
    "backbone was pretrained on ImageNet, whose classes overlap CIFAR-10's and include Tiny ImageNet's (see "
    "Set-up). `fused_content`'s rule (a truncated product of the two views' p-values) was fixed before it was "
    "measured on any OOD set; `feature_knn`'s k = 2 is Bergman et al.'s. `feature_energy` (its C = 10) and its "
    "place in the content view (Fisher's sum with `feature_knn`) were chosen on held-out classes of the "
    "in-distribution training images, before any OOD set was scored with them.",
]


def _report_detectors(out: dict) -> list[str]:
    """The detectors table, the fitting slices and the notes."""
    families = out["families"]
    lines: list[str] = []
    lines += ["### Detectors", ""]
    first = {d: r for f in families.values() for d, r in next(iter(f["seeds"].values()))["detectors"].items()}
    lines += [markdown_table(["detector", "paper", "runs on", "fits", "options"],
                             [[f"`{d}`", r["paper"], " + ".join([r["model"], *[e for e in r["extra_runs"]
                                                                               if e != r["model"]]]),
                               "yes" if r["fit"] else "no",
                               ", ".join(f"{k}={v}" for k, v in r["options"].items() if not k.endswith("_run"))]
                              for d, r in first.items()]), ""]
    lines += ["### Fitting data (held-out training images, never test images)", ""]
    rows = []
    for fam_name, f in families.items():
        for seed, r in f["seeds"].items():
            fd = r.get("fit_data")
            if fd:
                rows.append([fam_name, seed, f"{fd['dataset']}/{fd['split']}", f"[{fd['start']}, {fd['stop']})",
                             fd["n"], f"[{fd['trained_range'][0]}, {fd['trained_range'][1]})", fd["source"]])
    lines += [markdown_table(["dataset", "seed", "fit split", "fit images", "n", "trained on", "source"], rows), ""]
    for note in out["notes"]:
        lines += [f"> Note: {note}.", ""]
    return lines


def _report_aurocs(out: dict) -> list[str]:
    """AUROC per detector and pair, and every metric per pair."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## AUROC per detector and pair (mean ± sd over seeds)", "",
              "OOD is the positive class; higher scores mean more out-of-distribution. 0.5 is chance; below 0.5 "
              "the detector ranks the OOD images as *more* in-distribution. *far*: another dataset, noise or "
              "constant images, whose pixel statistics differ; *near*: images whose pixel statistics stay typical "
              "but whose content is wrong (the in-distribution test images rotated by 90°; for CIFAR-10, Tiny "
              "ImageNet's natural images of other classes; for Tiny ImageNet 64, the validation photos of its "
              "other classes).", ""]
    pairs = [(fam, o) for fam, f in families.items() for o in f["ood"]]
    detectors = list(dict.fromkeys(d for f in families.values() for d in f["summary"]))
    header = ["detector", *[f"{families[fam]['title']} → {o} ({(families[fam].get('kinds') or {}).get(o, 'far')})"
                            for fam, o in pairs]]
    rows = []
    for d in detectors:
        row = [f"`{d}`"]
        for fam, o in pairs:
            st = families[fam]["summary"].get(d, {}).get(o)
            row.append(pm(st["auroc"]) if st else "—")
        rows.append(row)
    lines += [markdown_table(header, rows), ""]

    lines += ["## Every metric, per pair", "",
              "AUPRC-in takes in-distribution as the positive class, AUPRC-out the OOD set; FPR@95 is the fraction "
              "of in-distribution test images flagged at the threshold that catches 95% of the OOD images.", ""]
    for fam, o in pairs:
        summ = families[fam]["summary"]
        lines += [f"### {families[fam]['title']} → {o}", ""]
        rows = [[f"`{d}`", pm(summ[d][o]["auroc"]), pm(summ[d][o]["auprc_in"]), pm(summ[d][o]["auprc_out"]),
                 pm(summ[d][o]["fpr_at_95_tpr"])] for d in summ if o in summ[d]]
        lines += [markdown_table(["detector", "AUROC", "AUPRC-in", "AUPRC-out", "FPR@95%TPR"], rows), ""]
    return lines


def _report_costs(out: dict) -> list[str]:
    """What each detector costs, the conformal decisions and the typicality batch test."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## What each detector costs", "",
              "Seconds on this machine (mean over seeds), for all the images of one dataset's evaluation (fit "
              "slice + in-distribution test set + every OOD set): computing the features it needs (each "
              "detector's own, as if run alone; shared features are cached and computed once in practice), "
              "fitting, scoring, and training the extra models it needs.", ""]
    rows = []
    for fam_name, f in families.items():
        for d, summ in f["summary"].items():
            sec = summ["seconds"]
            r0 = f["seeds"][next(iter(f["seeds"]))]["detectors"][d]
            rows.append([fam_name, f"`{d}`", f"{sec['features']['mean']:.1f}", f"{sec['fit']['mean']:.2f}",
                         f"{sec['score']['mean']:.3f}", f"{sec['extra_training']['mean']:.1f}",
                         ", ".join(r0["extra_runs"]) or "—"])
    lines += [markdown_table(["dataset", "detector", "features [s]", "fit [s]", "score [s]", "extra training [s]",
                              "extra models"], rows), ""]

    lines += decision_section(families)

    tb = {fam: f["seeds"] for fam, f in families.items()}
    rows = []
    for fam_name, seeds in tb.items():
        tests = [r.get("typicality_batch_test") for r in seeds.values() if r.get("typicality_batch_test")]
        if not tests:
            continue
        for ood in tests[0]:
            ms = list(tests[0][ood]["by_m"])
            rows.append([fam_name, ood, *[
                f"{np.mean([t[ood]['by_m'][m]['power'] for t in tests]):.3f}" for m in ms],
                f"{np.mean([t[ood]['by_m'][ms[0]]['false_alarm'] for t in tests]):.3f}"])
    if rows:
        lines += ["## Typicality as the paper's batch test", "",
                  "Power (fraction of OOD batches of M images flagged) at level α = 0.01, the threshold set by "
                  "bootstrap on held-out training batches (Nalisnick et al. 2019b); mean over seeds.", "",
                  markdown_table(["dataset", "OOD", *[f"M = {m}" for m in ms], "false alarms at M = 1"], rows), ""]
    return lines


def decision_section(families: dict) -> list[str]:
    """The report's table of conformal decisions: per detector and α, the realised
    false-alarm rate on the in-distribution test images and the TPR on each OOD set."""
    lines = ["## Decisions at a chosen false-alarm rate (conformal, `vaeood detect`)", "",
             "Each detector's threshold at α is calibrated on held-out training images (after its fitting slice, "
             "never test images): flag an image when its conformal p-value (1 + #{calibration scores ≥ s})/(n + 1) "
             "is ≤ α, which guarantees a false-alarm rate ≤ α in expectation for exchangeable in-distribution "
             "images (marginal guarantee; Bates et al. 2023). Realised FPR on the in-distribution test images and "
             "TPR on each OOD set, mean ± sd over seeds; 'bound' is α plus the binomial 95% margin for this many "
             "test images.", ""]
    for fam in families.values():
        dec = decision_summary(fam["seeds"])
        oods = fam["ood"]
        rows = []
        for name, per_alpha in dec.items():
            if "error" in per_alpha:
                rows.append([f"`{name}`", "—", per_alpha["error"].splitlines()[0][:100], "—", *["—"] * len(oods)])
                continue
            for key, d in per_alpha.items():
                if "error" in d:
                    rows.append([f"`{name}`", key, d["error"], "—", *["—"] * len(oods)])
                    continue
                rows.append([f"`{name}`", key, pm(d["fpr"]), f"{d['bound']:.3f}",
                             *[pm(d["tpr"][o]) if o in d["tpr"] else "—" for o in oods]])
        lines += [f"### {fam['title']}", "",
                  markdown_table(["detector", "α", "realised FPR", "bound", *[f"TPR {o}" for o in oods]], rows), ""]
    return lines



def _report_closing(out: dict) -> list[str]:
    """Figures, training and which detector to use."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## Figures", ""]
    for key, path in out["figures"].items():
        lines += [f"![{key}]({path})", ""]

    lines += ["## Training", ""]
    rows = []
    for fam_name, f in families.items():
        for seed, r in f["seeds"].items():
            for variant, t in r["training"].items():
                rows.append([fam_name, seed, variant, t["config"]["model"]["latent_dim"], t["num_parameters"],
                             t["epochs"], round(t["final_train_loss_nats"], 1), round(t["train_seconds"], 1)])
    lines += [markdown_table(["dataset", "seed", "model", "latent", "parameters", "epochs", "final train loss [nats]",
                              "train time [s]"], rows), ""]

    lines += ["## Which detector to use", ""] + _closing(out) + [""]
    lines += ["Runs, per-image features and per-image detector scores are in `runs/` (not committed); "
              "`metrics.json` holds every number above.", ""]
    return lines


def _closing(out: dict) -> list[str]:
    v = out["verdict"]
    if not v.get("best"):
        return ["No pair was evaluated."]
    lines = [f"- {line}" for line in v["lines"]]
    fails = [f for f in v["failures"] if f["kind"].startswith("fails")]
    weak = [f for f in v["failures"] if not f["kind"].startswith("fails")]
    if fails or weak:
        lines += [f"- Where detectors fail (mean AUROC below {FAIL_BELOW}: the OOD set is ranked as *more* "
                  f"in-distribution) or are weak (below {WEAK_BELOW}):", "",
                  markdown_table(["detector", "pair", "AUROC (mean ± sd)", "verdict", "short of 0.9 by"],
                                 [[f"`{f['detector']}`", f["pair"], f"{f['auroc']:.3f} ± {f['auroc_sd']:.3f}",
                                   "**fails**: inverted" if f in fails else "weak", f"{WEAK_BELOW - f['auroc']:.3f}"]
                                  for f in sorted(fails + weak, key=lambda f: f["auroc"])]), ""]
    if v.get("default"):
        lines += default_table(out)
    ok = [d for d, w in v["worst_by_detector"].items() if w >= WEAK_BELOW]
    if ok:
        lines.append(f"- Above {WEAK_BELOW} on every pair: " + ", ".join(
            f"`{d}` (worst {v['worst_by_detector'][d]:.3f})"
            for d in sorted(ok, key=lambda d: -v['worst_by_detector'][d]))
            + ".")
    else:
        lines.append(f"- No detector stays above {WEAK_BELOW} on every pair.")
    by_data = {(fam, d): why for fam, f in out["families"].items() for s in f["seeds"].values()
               for d, why in (s.get("skipped") or {}).items()}
    skipped = sorted(set(SUITE_DETECTORS) - set(v["worst_by_detector"]) - {d for _, d in by_data})
    if skipped:
        lines.append(f"- Not run by this preset: {', '.join(f'`{d}`' for d in skipped)} (see the preset's comment; "
                     "`--preset paper` runs every detector).")
    lines += [f"- `{d}` was skipped on {fam}, where it does not apply: {why}." for (fam, d), why in by_data.items()]
    lines += [f"- Caveat: {c}" for c in CAVEATS]
    return lines


"""Numbers over seeds: the metrics' mean ± sd, the conformal decisions' rates, and the
verdict (which detector to use) with the intervals of the best and the default detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...evaluation.intervals import seed_summary
from ...evaluation.metrics import METRIC_NAMES
from .presets import DEFAULT_DETECTOR, PIXEL_DETECTOR

FAIL_BELOW = 0.5  # AUROC below this: the detector ranks OOD images as *more* in-distribution
WEAK_BELOW = 0.9  # AUROC below this: not usable as a detector on that pair


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "values": [float(v) for v in arr]}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """``{detector: {ood: {metric: {mean, sd, min, max, values}}, "seconds": {...}}}`` over seeds."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]]["detectors"])
    out = {}
    for name in names:
        runs = [per_seed[s]["detectors"][name] for s in seeds]
        oods = list(runs[0]["metrics"])
        out[name] = {ood: {m: _stats([r["metrics"][ood][m] for r in runs]) for m in METRIC_NAMES} for ood in oods}
        out[name]["seconds"] = {k: _stats([r["seconds"][k] for r in runs]) for k in runs[0]["seconds"]}
    return out


def decision_summary(seeds: dict) -> dict:
    """``{detector: {α: {"fpr": stats, "bound": mean α + binomial 95%, "tpr": {ood: stats}}}}``
    over seeds, from each seed's conformal operating points (``None`` where a seed could
    not be calibrated: the message is kept under ``"error"``)."""
    out = {}
    for name in next(iter(seeds.values()))["detectors"]:
        per = [r["detectors"][name].get("decisions") for r in seeds.values()]
        if not all(p and "alphas" in p for p in per):
            out[name] = {"error": next((p.get("error") for p in per if p and "error" in p), "not calibrated")}
            continue
        out[name] = {}
        for key in per[0]["alphas"]:
            entries = [p["alphas"][key] for p in per]
            if any("error" in e for e in entries):
                out[name][key] = {"error": "too few calibration images"}
                continue
            out[name][key] = {"fpr": _stats([e["fpr"] for e in entries]),
                              "bound": float(np.mean([e["fpr_binomial_upper95"] for e in entries])),
                              "tpr": {o: _stats([e["tpr"][o]["tpr"] for e in entries]) for o in entries[0]["tpr"]}}
    return out



def pm(stats: dict, digits: int = 3) -> str:
    if len(stats.get("values", ())) == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def verdict(out: dict) -> dict:
    """Which detector to use: the best per pair, the one whose worst pair is best (over
    every pair, and over the far-OOD and the near-OOD pairs apart), and every (detector,
    pair) whose mean AUROC is below :data:`WEAK_BELOW` (fails: below :data:`FAIL_BELOW`,
    i.e. it ranks OOD images as more in-distribution)."""
    pairs = [(fam, ood) for fam, f in out["families"].items() for ood in f["ood"]]
    if not pairs:
        return {"lines": ["no pair was evaluated"], "best": {}, "failures": []}
    detectors = list(dict.fromkeys(d for f in out["families"].values() for d in f["summary"]))
    auroc = {(d, fam, ood): out["families"][fam]["summary"][d][ood]["auroc"]
             for d in detectors for fam, ood in pairs if d in out["families"][fam]["summary"]}
    best = {}
    for fam, ood in pairs:
        ranked = sorted((auroc[(d, fam, ood)]["mean"], d) for d in detectors if (d, fam, ood) in auroc)
        best[f"{fam}→{ood}"] = {"detector": ranked[-1][1], "auroc": ranked[-1][0]}
    kind_of = {(fam, ood): (out["families"][fam].get("kinds") or {}).get(ood, "far") for fam, ood in pairs}
    by_kind = {kind: _robust(auroc, detectors, [p for p in pairs if kind_of[p] == kind]) for kind in ("far", "near")}
    worst, robust = _robust(auroc, detectors, pairs)
    failures = [{"detector": d, "pair": f"{fam}→{ood}", "auroc": auroc[(d, fam, ood)]["mean"],
                 "auroc_sd": auroc[(d, fam, ood)]["sd"], "ood_kind": kind_of[(fam, ood)],
                 "kind": "fails (inverted)" if auroc[(d, fam, ood)]["mean"] < FAIL_BELOW else "weak"}
                for d in detectors for fam, ood in pairs
                if (d, fam, ood) in auroc and auroc[(d, fam, ood)]["mean"] < WEAK_BELOW]
    lines = [f"Best worst case: `{robust}` (lowest mean AUROC over every pair {worst[robust]:.3f})."]
    for kind, (w, r) in by_kind.items():
        if r is not None:
            lines.append(f"Best worst case on {kind}-OOD pairs: `{r}` (lowest mean AUROC {w[r]:.3f}).")
    for pair, b in best.items():
        lines.append(f"Best on {pair}: `{b['detector']}` (AUROC {b['auroc']:.4f}).")
    return {"lines": lines, "best": best, "robust": {"detector": robust, "worst_auroc": worst[robust]},
            "robust_by_kind": {k: ({"detector": r, "worst_auroc": w[r]} if r else None)
                               for k, (w, r) in by_kind.items()},
            "worst_by_detector": worst, "failures": failures}


def add_best_intervals(out_dir: Path, out: dict) -> None:
    """The best detector of every pair, the default detector ``fused_content`` and its pixel
    view ``fused`` on every pair, get the AUROC's 95% interval and verdict word (the two-level
    bootstrap over seeds and test images of :func:`vaeood.evaluation.intervals.seed_summary`): in
    ``verdict["best"]`` and its line, ``verdict["default"]`` and ``verdict["pixel"]``."""
    v = out["verdict"]
    v["default"], v["pixel"] = {}, {}
    for pair, best in v.get("best", {}).items():
        fam_name, ood = pair.split("→")
        fam = out["families"][fam_name]
        for name in dict.fromkeys([best["detector"], DEFAULT_DETECTOR, PIXEL_DETECTOR]):
            if name not in fam["summary"]:
                continue
            scores = [load_scores(out_dir, fam, name, seed) for seed in fam["seeds"]]
            summary = seed_summary([(s[fam_name], s[ood]) for s in scores])
            record = {"auroc": summary.mean, "interval": list(summary.interval), "verdict": summary.verdict,
                      "text": summary.text()}
            if name == best["detector"]:
                best.update(record)
            for key, headline in (("default", DEFAULT_DETECTOR), ("pixel", PIXEL_DETECTOR)):
                if name == headline:
                    v[key][pair] = {"detector": name, **record}
        v["lines"] = [f"Best on {pair}: `{best['detector']}` ({best['text']})." if line.startswith(f"Best on {pair}:")
                      else line for line in v["lines"]]


def _robust(auroc: dict, detectors: list[str], pairs: list) -> tuple[dict, str | None]:
    """Each detector's lowest mean AUROC over the ``pairs``, and the detector whose lowest is
    highest (None without pairs). Only detectors that ran on every one of the pairs compete
    (a family may leave some out: a detector must not win by skipping the hard pairs); where
    none did, each over the pairs it ran on."""
    ran = {d: [p for p in pairs if (d, *p) in auroc] for d in detectors}
    everywhere = [d for d in detectors if ran[d] and len(ran[d]) == len(pairs)]
    worst = {d: min(auroc[(d, *p)]["mean"] for p in ran[d]) for d in (everywhere or [d for d in detectors if ran[d]])}
    return worst, (max(worst, key=worst.get) if worst else None)



def load_scores(out_dir: Path, family: dict, name: str, seed) -> dict[str, np.ndarray]:
    path = Path(family["seeds"][seed]["detectors"][name]["scores_file"])
    path = path if path.is_absolute() else out_dir / path
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}



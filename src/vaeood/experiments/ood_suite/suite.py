"""The suite's orchestration: per family and seed, train the models, evaluate every
detector and calibrate its decisions; then summarise, draw and report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ...infra.atomic import atomic_write_json, atomic_write_text
from ...training.config import Config
from ...data import DatasetNotFoundError, load_dataset
from ...decisions.run_rates import DEFAULT_ALPHAS, decision_rates
from ...evaluation.evaluate import evaluate
from ...features import shared_feature_cache
from ...features.backbone import DEFAULT_BACKBONE, DEFAULT_SIZE
from ...models.backbones import get_backbone
from ..common import runs_bar, stamp
from .figures import write_figures
from .paths import scrub_paths
from .planning import (MAIN, companion_options, extra_runs, family_detectors, known_detectors, plan_models, runs_on,
                       train_models)
from .photos import find_photos, write_photo_sets
from .presets import (BACKBONE_DETECTORS, DEFAULT_DETECTOR, PIXEL_DETECTOR, SYNTHETIC, SYNTHETIC_SEED, Family,
                      SuitePreset)
from .report import render_report
from .summary import add_best_intervals, aggregate, pm, verdict
from .synthetic import write_rotated, write_synthetic

log = logging.getLogger(__name__)

#: families with more detectors than this show only the default one and those the verdict
#: names in the terminal's summary (every detector is in report.md and metrics.json)
SUMMARY_ROWS = 6


@dataclass(frozen=True)
class OODSuite:
    name: str
    title: str
    families: dict[str, Family]
    presets: dict[str, SuitePreset]
    own_keys: tuple[str, ...] = ("data.name", "train.seed")  # set for each family and seed: not overridable

    def datasets_needed(self) -> list[tuple[str, str]]:
        datasets = [f for f in self.families.values() if not f.photos]  # a photo folder is not downloaded
        names = [(f.name, s) for f in datasets for s in ("train", "test")]
        names += [(o, "test") for f in datasets for o in (*f.ood, *f.optional_ood)]
        return list(dict.fromkeys(names))

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None,
            families: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None) -> dict:
        """Train, evaluate every detector on every pair for every seed, and write
        ``report.md``, ``metrics.json`` and ``figures/`` into ``out_dir``."""
        pre = self.presets[preset]
        estimator = estimator or pre.estimator
        options = {**(pre.estimator_options if estimator == pre.estimator else {}), **(estimator_options or {})}
        seeds = tuple(seeds if seeds is not None else pre.seeds)
        out_dir.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        wanted = [self.families[f] for f in (families or pre.families or self.families)]
        results: dict[str, dict] = {}
        progress_bar = runs_bar(len(wanted) * len(seeds), self.name, progress)
        for fam in wanted:
            plan = self._plan(fam, pre, data_dir, notes, out_dir)
            if plan is None:
                continue
            synthetic_dir = write_synthetic(out_dir / "runs" / "data" / "x".join(map(str, fam.shape)), fam.shape,
                                            pre.synthetic_images)
            if fam.rotate:
                plan["ood"].append(write_rotated(synthetic_dir, fam, data_dir, pre.allow_sample))
            plan["detectors"], left_out = family_detectors(fam, pre)
            per_seed = {}
            for seed in seeds:
                progress_bar.set_postfix_str(f"{fam.title} seed {seed}")
                # the backbone's features of one image serve every seed and run (features.core)
                with shared_feature_cache(out_dir / "runs" / "features"):
                    per_seed[seed] = self._one_seed(fam, plan, pre, seed, out_dir, overrides or {}, synthetic_dir,
                                                    device, estimator, options, progress)
                progress_bar.update()
            results[fam.name] = {"title": fam.title, "ood": plan["ood"], "conform": fam.conform, "seeds": per_seed,
                                 "kinds": {o: fam.kind(o) for o in plan["ood"]},
                                 "summary": aggregate(per_seed), "data": plan["data"],
                                 "detectors": plan["detectors"], "left_out": left_out,
                                 "n_fit": pre.family_n_fit(fam.name), **({"photos": plan["photos"]}
                                                                         if "photos" in plan else {})}
        progress_bar.close()
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               **stamp(device), "estimator": estimator, "estimator_options": options, "seeds": list(seeds),
               "settings": _settings(pre), "notes": notes, "families": results}
        out["backbone"] = _backbone_record(pre)
        out["figures"] = write_figures(out_dir, out)
        out["verdict"] = verdict(out)
        add_best_intervals(out_dir, out)
        out = scrub_paths(out, out_dir)
        atomic_write_json(out_dir / "metrics.json", out)
        atomic_write_text(out_dir / "report.md", render_report(self, out))
        return out

    # -- one family ---------------------------------------------------------------------
    def _plan(self, fam: Family, pre: SuitePreset, data_dir: str | None, notes: list[str],
              out_dir: Path) -> dict | None:
        """Which OOD sets this family is scored against and the folder its data is read from,
        or None (with a note) when its in-distribution data is missing and the family is optional."""
        if fam.photos:
            return _plan_photos(fam, pre, data_dir, notes, out_dir)
        allow = pre.allow_sample
        data = {}
        try:
            for split in ("train", "test"):
                d = load_dataset(fam.name, split, data_dir=data_dir, allow_sample=allow)
                data[f"{fam.name}/{split}"] = _describe(d)
        except DatasetNotFoundError:
            if not fam.optional:
                raise
            notes.append(f"{fam.title} was not found, so its pairs were skipped (put `{fam.name}_train.npz` / "
                         f"`{fam.name}_test.npz` or the official files in the data folder)")
            return None
        ood = []
        for name in (*fam.ood, *fam.optional_ood):
            try:
                d = load_dataset(name, "test", data_dir=data_dir, allow_sample=allow)
            except DatasetNotFoundError:
                if name not in fam.optional_ood:
                    raise
                notes.append(f"{fam.title} → {name}: {name} was not found on this machine, so this pair was "
                             f"skipped (the official `{name}` test files in the data folder enable it)")
                continue
            data[f"{name}/test"] = _describe(d)
            ood.append(name)
        return {"ood": [*ood, *SYNTHETIC], "data": data, "data_dir": data_dir}

    def _one_seed(self, fam: Family, plan: dict, pre: SuitePreset, seed: int, out_dir: Path, overrides: dict,
                  synthetic_dir: Path, device: str, estimator: str, options: dict,
                  progress: bool | None) -> dict:
        runs_dir = out_dir / "runs" / f"{fam.name}-seed{seed}"
        data_dir, n_fit = plan["data_dir"], pre.family_n_fit(fam.name)
        base = {"data.name": fam.name, "model.likelihood": "dlogistic", "model.arch": "conv",
                **pre.train[fam.name], "train.seed": str(seed), "train.device": device,
                "data.allow_sample": str(pre.allow_sample).lower(), **overrides}
        latent = Config().override(base).model.latent_dim
        dets = plan["detectors"]
        runs, training = train_models(base, plan_models(dets, pre), runs_dir, data_dir, progress)
        common = dict(split="test", estimator=estimator, estimator_options=options, data_dir=data_dir,
                      limit=pre.family_test_limit(fam.name), n_fit=n_fit, device=device, seed=seed,
                      allow_sample=pre.allow_sample, progress=progress, conform=fam.conform,
                      data_dirs={s: str(synthetic_dir) for s in (*SYNTHETIC, fam.rotated)})
        det_opts = {name: {**(pre.detector_options.get(name) or {}), **companion_options(name, runs)} for name in dets}
        groups: dict[str, list[str]] = {MAIN: []}
        for name in dets:
            groups.setdefault(runs_on(name), []).append(name)
        evaluations, decisions = {}, {}
        for model, names in groups.items():
            if not names:
                continue
            opts = {d: det_opts[d] for d in names}
            log.info("%s seed %d: scoring %d detector%s on the %s model against %s", fam.title, seed, len(names),
                     "s" * (len(names) > 1), model, ", ".join(plan["ood"]))
            fits = {}  # the detectors evaluate fits, calibrated below without a second fit
            # a detector the data does not allow (feature_energy without two classes to fit on) is skipped
            evaluations[model] = evaluate(runs[model], fam.name, plan["ood"], detectors=names, detector_options=opts,
                                          out_dir=runs_dir / f"eval-{model}", keep_fits=fits, skip_inapplicable=True,
                                          **common)
            names = [d for d in names if d not in evaluations[model]["skipped"]]
            decisions.update(decision_rates(
                runs[model], fam.name, plan["ood"], names, detector_options={d: opts[d] for d in names},
                alphas=DEFAULT_ALPHAS, split="test",
                limit=pre.family_test_limit(fam.name), n_calibration=n_fit, n_fit=n_fit,
                data_dir=data_dir,
                data_dirs=common["data_dirs"], device=device, seed=seed, conform=fam.conform,
                allow_sample=pre.allow_sample, fits=fits))
        detectors = _detector_records(evaluations, decisions, training, runs_dir, out_dir)
        detectors = {d: detectors[d] for d in dets if d in detectors}  # the preset's order
        main = evaluations.get(MAIN) or next(iter(evaluations.values()))
        return {"detectors": detectors, "training": training, "latent_dim": latent,
                "fit_data": main.get("fit_data"), "datasets": main["datasets"], "fitted": main["fitted"],
                "typicality_batch_test": main.get("typicality_batch_test"),
                "skipped": {k: v for ev in evaluations.values() for k, v in ev["skipped"].items()}}

    def summary(self, out: dict) -> str:
        """The AUROC table (mean ± sd over seeds) and the verdict, for the terminal."""
        lines = []
        for name, fam in out["families"].items():
            oods = fam["ood"]
            header = ["detector", *[f"{fam['title']}→{o}" for o in oods]]
            shown = _named_in_verdict(out, name)
            body = [[d, *[pm(s[o]["auroc"]) for o in oods]] for d, s in fam["summary"].items()
                    if d in shown or len(fam["summary"]) <= SUMMARY_ROWS]
            widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]]
            if len(body) < len(fam["summary"]):
                lines.append(f"(the default detector and those the verdict names; the other "
                             f"{len(fam['summary']) - len(body)} are in the report)")
            lines.append("")
        lines += [f"- {line}" for line in out["verdict"]["lines"]]
        lines += [f"NOTE: {n}" for n in out["notes"]]
        if any(d["is_sample"] for f in out["families"].values() for d in f["data"].values()):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


def _named_in_verdict(out: dict, family: str) -> set[str]:
    """The detectors the terminal's summary shows for ``family``: the default one and those
    the verdict names (the best worst case, overall and by kind, and the best on each pair)."""
    v = out.get("verdict") or {}
    named = {DEFAULT_DETECTOR, PIXEL_DETECTOR, (v.get("robust") or {}).get("detector")}
    named |= {r["detector"] for r in (v.get("robust_by_kind") or {}).values() if r}
    named |= {b["detector"] for pair, b in (v.get("best") or {}).items() if pair.split("→")[0] == family}
    return named



def _detector_records(evaluations: dict, decisions: dict, training: dict, runs_dir: Path, out_dir: Path) -> dict:
    """Per detector: the model it ran on, its metrics, options, paper, costs (features, fit,
    scoring and the training of the models beyond ``main`` it needs) and its decisions."""
    detectors = {}
    for model, ev in evaluations.items():
        eval_dir = runs_dir / f"eval-{model}"
        for name, per_ood in ev["results"].items():
            info = ev["detectors"][name]
            extra = extra_runs(name, info["options"])
            detectors[name] = {
                "model": model, "metrics": per_ood, "options": info["options"], "paper": info["paper"],
                "fit": info["fit"], "scores_file": str((eval_dir / ev["detector_scores"][name]).relative_to(out_dir)),
                "seconds": {"features": info["seconds"]["features_total"], "fit": info["seconds"]["fit"],
                            "score": info["seconds"]["score"],
                            "extra_training": sum(training[r]["train_seconds"] for r in extra)},
                "extra_runs": extra, "decisions": decisions.get(name)}
    return detectors


def _plan_photos(fam: Family, pre: SuitePreset, data_dir: str | None, notes: list[str], out_dir: Path) -> dict | None:
    """A photo family's plan: its sets written from its folder into ``OUT/runs/data/NAME``
    (:mod:`.photos`), which is then its data dir; None (with a note) when the folder is absent."""
    src = find_photos(fam, data_dir)
    if src is None:
        notes.append(f"{fam.title} was not found, so its pairs were skipped (a `{fam.photos}/` folder with "
                     f"`train/<class>/` and `val/<class>/` photos in the data folder enables it)")
        return None
    folder = out_dir / "runs" / "data" / fam.name
    photos = write_photo_sets(fam, src, folder, pre.family_test_limit(fam.name))
    data = {k: {key: v[key] for key in ("n", "source", "is_sample")} for k, v in photos["sets"].items()}
    return {"ood": [*fam.near, *SYNTHETIC], "data": data, "data_dir": str(folder), "photos": photos}


def _backbone_record(pre: SuitePreset) -> dict:
    """The pretrained network the feature-space detectors read, its input size and what it saw."""
    opts = pre.detector_options.get("feature_knn") or {}
    b = get_backbone(opts.get("backbone") or DEFAULT_BACKBONE)
    return {"name": b.name, "size": opts.get("size") or DEFAULT_SIZE, "pretrained_on": b.pretrained_on,
            "weights": dict(b.weights), "detectors": list(BACKBONE_DETECTORS)}


def _describe(d) -> dict:
    return {"n": int(len(d.images)), "source": d.source, "is_sample": bool(d.is_sample)}


def _settings(pre: SuitePreset) -> dict:
    return {"train": pre.train, "test_images_per_set": pre.test_limit, "test_images_per_family": pre.test_limits,
            "n_fit": pre.n_fit, "n_fit_per_family": pre.n_fits,
            "synthetic_images": pre.synthetic_images, "synthetic_seed": SYNTHETIC_SEED,
            "models": plan_models(known_detectors(pre), pre), "detectors": list(pre.detectors),
            "detector_options": pre.detector_options, "likelihood": "dlogistic", "arch": "conv"}


"""Which models the detectors need, read from their declarations, and their training.

Every detector runs on the ``main`` model unless its class declares ``runs_on`` (a
:class:`vaeood.detectors.base.ModelSpec`), and gets, for each option of its ``companions``,
the run directory of the model declared there. Each declared model is trained from the
main model's config with the declared overrides, then the preset's overrides for that
model's name (``SuitePreset.models``); detectors that declare the same name share it.
"""

from __future__ import annotations

from pathlib import Path

from ...training.config import Config, ConfigError
from ...detectors import DETECTORS
from ..reuse import train_or_reuse
from .presets import Family, SuitePreset

MAIN = "main"  # the model every detector runs on unless it declares another


def known_detectors(pre: SuitePreset) -> list[str]:
    """The preset's detectors, refusing a name no detector is registered under."""
    unknown = [d for d in pre.detectors if d not in DETECTORS]
    if unknown:
        raise KeyError(f"ood-suite: unknown detectors {', '.join(unknown)}; known: {', '.join(DETECTORS.names())}")
    return list(pre.detectors)


def family_detectors(fam: Family, pre: SuitePreset) -> tuple[list[str], dict[str, str]]:
    """The preset's detectors that ``fam`` runs, and ``{detector: why not}`` for the others: a
    family without ``extra_models`` runs only the detectors that need the main model alone."""
    dets, left_out = [], {}
    for name in known_detectors(pre):
        extra = [] if fam.extra_models else declared_models(name)
        if extra:
            left_out[name] = f"needs the {' and '.join(extra)} model{'s' * (len(extra) > 1)} beside `main`"
        else:
            dets.append(name)
    return dets, left_out


def declared_models(detector: str) -> list[str]:
    """The models beyond ``main`` that ``detector``'s class declares (``runs_on``, ``companions``)."""
    cls = DETECTORS.get(detector)
    return [spec.name for spec in [*([cls.runs_on] if cls.runs_on else []), *cls.companions.values()]]


def runs_on(detector: str) -> str:
    """The name of the model ``detector`` scores with."""
    spec = DETECTORS.get(detector).runs_on
    return spec.name if spec else MAIN


def plan_models(dets: list[str], pre: SuitePreset) -> dict[str, dict]:
    """``{model: {"overrides": {...}, "for": [detectors]}}``: ``main`` first, then every model
    the detectors declare (what they run on, then their companions) in the detectors' order.
    Two declarations of one name with different overrides are refused."""
    models = {MAIN: {"overrides": {}, "for": [d for d in dets if runs_on(d) == MAIN]}}
    for name in dets:
        cls = DETECTORS.get(name)
        for spec in [*([cls.runs_on] if cls.runs_on else []), *cls.companions.values()]:
            overrides = {**spec.overrides, **pre.models.get(spec.name, {})}
            model = models.setdefault(spec.name, {"overrides": overrides, "for": []})
            if model["overrides"] != overrides:
                raise ConfigError(f"ood-suite: detector {name!r} declares model {spec.name!r} with overrides "
                                  f"{overrides}, but {', '.join(model['for'])} with {model['overrides']}")
            model["for"].append(name)
    return models


def companion_options(detector: str, runs: dict[str, Path]) -> dict[str, str]:
    """The options of ``detector`` that receive its companions' run directories."""
    return {option: str(runs[spec.name]) for option, spec in DETECTORS.get(detector).companions.items()}


def extra_runs(detector: str, options: dict) -> list[str]:
    """The models ``detector`` needs beyond ``main``: the one it runs on, then those its
    options name (a companion option left unset names none)."""
    on = runs_on(detector)
    named = [spec.name for option, spec in DETECTORS.get(detector).companions.items() if options.get(option)]
    return [*([on] if on != MAIN else []), *named]


def train_models(base: dict, models: dict[str, dict], runs_dir: Path, data_dir: str | None,
                 progress: bool | None) -> tuple[dict, dict]:
    """Train (or reuse) every model of :func:`plan_models` into ``runs_dir/NAME`` from the
    main model's config ``base`` and its overrides. Returns the run folders and training
    summaries by model."""
    runs, training = {}, {}
    for name, model in models.items():
        runs[name] = runs_dir / name
        training[name] = train_or_reuse(Config().override({**base, **model["overrides"]}), runs[name],
                                        data_dir=data_dir, progress=progress,
                                        declared={"model": name, "overrides": model["overrides"]})
    return runs, training

"""The detector protocol (after pytorch-ood): a detector declares the features it needs,
is fitted on features of held-out *training* images where it needs to be, and scores:
one number per image, higher = more out-of-distribution.

    class MyDetector(Detector):
        name = "mine"
        fits = True
        def __init__(self, *, estimator="elbo"):          # keyword options only: recorded, checked
            super().__init__(estimator=estimator)
        @property
        def needs(self):                                   # feature name (or alias) -> options
            return {"log_px": {"estimator": self.options["estimator"]}}
        def _fit(self, features):                          # held-out TRAIN features only
            self.h = features["log_px_nats"].mean()
        def _score(self, features):                        # -> float64 [N]
            return abs(features["log_px_nats"] - self.h)

    DETECTORS.register("mine")(MyDetector)

``features`` is the flat dict of :func:`vaeood.features.compute_features` (``[N]``
arrays such as ``log_px_nats``, ``bpd``, ``mu_z_norm``; an aliased need's outputs as
``"alias/output"``). ``fit`` refuses features whose metadata says they are test images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..training.config import ConfigError
from ..inference.estimators import ESTIMATORS
from ..infra.registry import Registry, check_options, split_names

DETECTORS: Registry = Registry("detector")

#: features that read a single Gaussian q(z|x) (model.posterior), which a hierarchical VAE has not
#: (``latent`` is not one: for a hierarchical VAE it gives every layer's bottom-up parameters)
SINGLE_LAYER_FEATURES = frozenset({"posterior", "reconstruction", "regret"})


@dataclass(frozen=True)
class ModelSpec:
    """A model a detector needs beside the one it is asked about: the config overrides
    that train it from that model's config (same data, seed and budget otherwise).
    ``name`` identifies it: detectors that declare the same name share one trained model,
    so they must declare the same overrides."""

    name: str
    overrides: Mapping[str, str] = field(default_factory=dict)


class FitDataError(ConfigError):
    """A detector was asked to fit on images it must not see (test images, or training
    images the model was trained on)."""


class Detector:
    """Base class. Subclasses set ``name``, ``fits``, take keyword options in
    ``__init__`` (passed on to ``super().__init__`` to be recorded), and implement
    ``needs`` and ``_score`` (and ``_fit`` when ``fits``)."""

    name: str = ""
    fits: bool = False  # needs in-distribution fitting data (a held-out TRAIN slice)
    normalised_only: bool = False  # needs bits/dim: only for normalised decoders
    required: tuple[str, ...] = ()  # options without which it cannot run (e.g. a second run): not a default
    paper: str = ""

    def __init__(self, **options):
        self.options = options
        self.fitted = not self.fits
        self.fit_info: dict = {}

    @property
    def needs(self) -> dict[str, dict]:
        raise NotImplementedError

    def fit(self, features: Mapping[str, np.ndarray]) -> Detector:
        """Fit on features of held-out training images (a no-op for detectors that do not fit)."""
        check_fit_features(features, self.name)
        if self.fits:
            details = self._fit(features) or {}  # what the fit chose (components, k, ...): recorded
            self.fit_info = {"n": image_count(features), **details}
        self.fitted = True
        return self

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Detector scores ``[N]`` (float64), higher = more out-of-distribution."""
        if not self.fitted:
            raise RuntimeError(f"detector {self.name!r} must be fitted on held-out training images first "
                               "(vaeood.fit_detector, or .fit(features))")
        out = np.asarray(self._score(features), dtype=np.float64)
        return out

    def _fit(self, features) -> dict | None:
        """Fit on held-out training features; may return what it chose (recorded in ``fit_info``)."""

    def _score(self, features) -> np.ndarray:
        raise NotImplementedError

    def frozen_options(self) -> dict:
        """Options that make a new detector repeat this fitted one's choices (a component
        count, a bandwidth picked by cross-validation) when fitted on other images: the
        options as given, unless a detector's fit chooses something."""
        return dict(self.options)

    #: option → the model whose run directory that option receives: another run the detector
    #: computes features with (the likelihood ratio's background, LPath's second VAE). Callers
    #: that train models for detectors (``vaeood reproduce ood-suite``) train it and pass its
    #: run directory; :func:`vaeood.evaluation.companions.check_companions` checks the option.
    companions: Mapping[str, ModelSpec] = MappingProxyType({})
    #: the model the detector is meant to score with, when not the run's own main model (LPath's
    #: two-model variant on a wide VAE, LLR on a hierarchical one); None: the main model
    runs_on: ModelSpec | None = None

    def companion_warnings(self, option: str, companion, run) -> list[str]:
        """What to say about the companion run of ``option`` whose config is ``companion``
        (``run``: this run's config) when it passes the shared checks (same dataset and
        image shape, :mod:`vaeood.evaluation.companions`) but departs from the paper's recipe; a
        :class:`ConfigError` for a setting the detector cannot do without."""
        return []

    def why_not(self, info: Mapping) -> str | None:
        """Why this detector does not apply to a run described by ``info`` (keys
        ``normalised``, ``has_fit_data``), or None when it does."""
        missing = [k for k in self.required if self.options.get(k) is None]
        if missing:
            return f"needs option {', '.join(missing)}"
        features = {opts.get("feature", key) for key, opts in self.needs.items()}
        if info.get("hierarchical", False) and features & SINGLE_LAYER_FEATURES:
            return "needs a single Gaussian q(z|x), which a hierarchical VAE does not have"
        if self.normalised_only and not info.get("normalised", False):
            return "needs bits/dim, which the decoder does not define (not a normalised pmf)"
        if self.fits and not info.get("has_fit_data", False):
            return "needs held-out training images to fit on (train with data.limit or data.holdout)"
        return None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


def image_count(features: Mapping) -> int:
    """How many images a flat features dict holds (the length of its first per-image array)."""
    return int(len(next(v for k, v in features.items() if k not in ("meta", "labels"))))


def check_fit_features(features: Mapping, name: str) -> None:
    """Refuse fitting data whose feature metadata says it is a test split."""
    metas = features.get("meta") if isinstance(features, Mapping) else None
    if not isinstance(metas, Mapping):
        return
    for meta in (metas.values() if all(isinstance(m, Mapping) for m in metas.values()) else [metas]):
        split = meta.get("split")
        if split == "test":
            raise FitDataError(f"detector {name!r} refuses to fit on {meta.get('dataset')}/{split} images: detectors "
                               "fit only on held-out images of the training split, never on the images they are "
                               "evaluated on")


def make_detector(name: str, options: Mapping | None = None) -> Detector:
    """A detector by registered name with keyword options (unknown options are refused)."""
    cls = DETECTORS.get(name)
    opts = check_options(cls.__init__, dict(options or {}), "detector", name, ("self",))
    try:
        detector = cls(**opts)
        detector.needs  # noqa: B018  builds (and checks) the feature requests
    except (TypeError, ValueError) as err:  # a value of the wrong kind, e.g. estimator_options = 5
        raise ConfigError(f"detector {name!r}: options {opts} are not valid ({err})") from None
    return detector


def detector_names(names, option: str = "--detectors") -> list[str]:
    """A detector list (``"a,b"`` or names) as names; an empty or blank one (an unset shell
    variable, ``","``) is refused naming ``option``, never read as "all" or as none."""
    chosen = split_names(names)
    if not chosen:
        raise ConfigError(f"{option} names no detector (got {names!r}); give a comma-separated list of "
                          f"{', '.join(DETECTORS.names())}, or 'all'")
    return chosen


def per_detector_options(options, option: str = "--detector-options") -> dict[str, dict]:
    """``{detector: {option: value}}`` checked: a mapping whose every value is a mapping (or
    null); refused naming ``option`` and the detector otherwise."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{option} must be a JSON object {{\"detector\": {{\"option\": value}}}}, "
                          f"got {type(options).__name__}")
    for name, value in options.items():
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{option}: the options of detector {name!r} must be a JSON object such as "
                              f"{{\"estimator\": \"iwae\"}}, got {type(value).__name__} {value!r}")
    return {name: dict(value or {}) for name, value in options.items()}


def estimate_need(estimator: str, estimator_options: dict | None) -> dict:
    """The ``log_px`` request of a detector that takes an estimator: the estimator's name and
    options checked here (an unknown name or option is refused before any work)."""
    fn = ESTIMATORS.get(estimator)
    options = check_options(fn, estimator_options or {}, "estimator", estimator, ("model", "x", "generator"))
    return {"estimator": estimator, "estimator_options": options}


def standardise_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def stack(features: Mapping[str, np.ndarray], names) -> np.ndarray:
    missing = [n for n in names if n not in features]
    if missing:
        have = ", ".join(sorted(k for k in features if k != "meta"))
        raise KeyError(f"features {', '.join(missing)} are missing (have {have})")
    return np.stack([np.asarray(features[n], dtype=np.float64) for n in names], axis=1)


def mahalanobis_fit(t: np.ndarray) -> np.ndarray:
    """The (pseudo-)inverse covariance of the rows of ``t`` [n, d], ridged by 1e-6 so that
    a constant or collinear column does not make it singular."""
    cov = np.cov(t, rowvar=False).reshape(t.shape[1], t.shape[1])
    return np.linalg.pinv(cov + 1e-6 * np.eye(len(cov)))


def mahalanobis_score(t: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """tᵀ Σ⁻¹ t per row, for statistics standardised on the fit rows (their mean is 0)."""
    return np.einsum("ni,ij,nj->n", t, precision, t)

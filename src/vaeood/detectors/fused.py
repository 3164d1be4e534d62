"""``fused``: far-OOD and near-OOD evidence in one score, the detector to pick by default.

    p_j(x) = P_ref(S_j ≥ S_j(x))                      per component j (see below)
    S(x)   = −2 Σ_j log p_j(x)                        (Fisher's combination, Fisher 1932)

with two components, each a detector fitted on the held-out training images:

- ``dose_plus``, the far-OOD evidence: a density of the likelihood, the PNG code length and
  the reconstruction error (Morningstar et al. 2021; Serrà et al. 2020; Huang et al. 2024);
- ``latent_gmm``, the near-OOD evidence: a density of where the image lands in latent
  space (:mod:`vaeood.detectors.latent`), which sees content the pixel statistics miss
  (a rotated garment keeps its grey levels, not its posterior).

The two scores live on unrelated scales (a 3-D KDE's and a 2Z-D mixture's −log density),
so each is first turned into a p-value against its own in-distribution reference: the
components are fitted K-fold on the fit images (``folds``, fixed split), each fold's
images scored by the components fitted without it, and these n out-of-fold scores are the
reference (the folds repeat the full fit's choices, e.g. its component count). Below the
reference's ``tail`` quantile u the p-value is the empirical
(1 + #{ref ≥ s}) / (n + 1); above it an exponential tail (peaks over threshold, with the
mean excess τ of the reference over u): p = (1 + #{ref ≥ u}) / (n + 1) · exp(−(s − u)/τ),
so that scores far beyond every reference image keep their order instead of sharing the
smallest p-value. The components are then refitted on all the fit images. Every choice
(the two components, Fisher's rule, K, the tail quantile) is fixed in advance, and every
number they fit is fitted on in-distribution images only.

The guarantee of ``vaeood detect --detector fused`` still holds: the fitted detector is one
fixed function of the image (its reference and components are frozen after ``fit``), and
``vaeood calibrate`` takes its conformal threshold on other held-out images than these, so
the conformal p-values of :mod:`vaeood.decisions.conformal` are exact as for any detector score. The
p-values inside the score need not be exact; they only put the components on one scale.
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS, Detector, image_count, make_detector

COMPONENTS = ("dose_plus", "latent_gmm")


def subset(features, rows: np.ndarray) -> dict:
    """The per-image arrays of ``features`` at ``rows``, the labels among them (a component
    may fit a classifier: ``feature_energy``); metadata left out."""
    return {k: np.asarray(v)[rows] for k, v in features.items() if k != "meta" and v is not None}


def fold_splits(n: int, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rest, held)`` row indices of ``folds`` folds of ``n`` rows, a fixed split (seed 0)."""
    return [(np.setdiff1d(np.arange(n), held), held)
            for held in np.array_split(np.random.default_rng(0).permutation(n), folds)]


class TailPValue:
    """Upper-tail p-values of scores against in-distribution reference scores: empirical
    up to the ``tail`` quantile u, an exponential tail above it (the module docstring)."""

    def __init__(self, reference: np.ndarray, tail: float):
        self.reference = np.sort(np.asarray(reference, dtype=np.float64))
        n = len(self.reference)
        self.u = float(np.quantile(self.reference, tail))
        excess = self.reference[self.reference > self.u] - self.u
        spread = float(np.std(self.reference)) or 1.0
        self.tau = float(excess.mean()) if len(excess) else spread  # one image above u gives its excess
        self.p_u = (1 + n - np.searchsorted(self.reference, self.u, side="left")) / (n + 1)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        n = len(self.reference)
        empirical = (1 + n - np.searchsorted(self.reference, s, side="left")) / (n + 1)
        log_p = np.where(s > self.u, np.log(self.p_u) - (s - self.u) / max(self.tau, 1e-12), np.log(empirical))
        # NaN stays NaN: a component that cannot score an image must not pass it as typical
        return np.where(np.isnan(s), np.nan, log_p)


@DETECTORS.register("fused")
class Fused(Detector):
    name = "fused"
    fits = True
    paper = "Fisher's combination of dose_plus (Morningstar et al. 2021) and a latent density"

    def __init__(self, *, components: tuple | list = COMPONENTS, folds: int = 5, tail: float = 0.9,
                 component_options: dict | None = None):
        names = list(components)
        if len(names) < 1 or len(set(names)) != len(names) or self.name in names:
            raise ConfigError(f"{self.name}: components must be distinct detector names other than {self.name!r}, "
                              f"got {components!r}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"{self.name}: folds must be an integer >= 2, got {folds!r}")
        if not 0.0 < float(tail) < 1.0:
            raise ConfigError(f"{self.name}: tail must be a quantile in (0, 1), got {tail!r}")
        chosen = dict(component_options or {})
        if set(chosen) - set(names):
            raise ConfigError(f"{self.name}: component_options names {sorted(set(chosen) - set(names))}, which are not "
                              f"among its components {names}")
        # component_options is recorded only when given, so that the records of plain fits keep their options
        super().__init__(components=names, folds=folds, tail=float(tail),
                         **({"component_options": chosen} if chosen else {}))
        self.parts = {c: make_detector(c, chosen.get(c)) for c in names}
        if any(not d.fits for d in self.parts.values()):
            raise ConfigError(f"{self.name}: every component must be a detector that fits (" + ", ".join(
                c for c, d in self.parts.items() if not d.fits) + " does not)")

    @property
    def needs(self):
        out: dict = {}
        for det in self.parts.values():
            out.update(det.needs)
        return out

    def why_not(self, info):
        return next((r for r in (d.why_not(info) for d in self.parts.values()) if r), None)

    def _fit(self, features):
        n = image_count(features)
        for det in self.parts.values():
            det.fit(features)
        # out-of-fold reference scores, each fold's components repeating the full fit's choices
        reference = {c: np.empty(n) for c in self.parts}
        for rest, held in fold_splits(n, self.options["folds"]):
            for c, det in self.parts.items():
                part = make_detector(c, det.frozen_options()).fit(subset(features, rest))
                reference[c][held] = part.score(subset(features, held))
        self.pvalues = {c: TailPValue(reference[c], self.options["tail"]) for c in self.parts}
        return {c: {k: v for k, v in d.fit_info.items() if k != "n"} for c, d in self.parts.items()}

    def _score(self, features):
        return -2.0 * sum(self.component_log_p(features).values())

    def frozen_options(self):
        """The options with each component's own choices frozen (a refit on other images
        repeats them, e.g. latent_gmm's component count)."""
        return {**self.options, "component_options": {c: d.frozen_options() for c, d in self.parts.items()}}

    def component_log_p(self, features) -> dict[str, np.ndarray]:
        """Each component's log p-value ``[N]`` (which evidence flagged an image)."""
        return {c: self.pvalues[c](d.score(features)) for c, d in self.parts.items()}

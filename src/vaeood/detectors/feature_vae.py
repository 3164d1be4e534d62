"""``feature_vae_nll`` / ``feature_vae_typicality`` / ``feature_vae_dose`` / ``feature_vae_latent``:
the likelihood detectors of the pixel VAE, asked of a VAE of the backbone's features.

With f(x) the pooled features of a frozen ImageNet-pretrained backbone
(:mod:`vaeood.features.backbone`), the fit images' features are split once (a fixed
permutation by ``seed``): a VAE of features (:class:`vaeood.models.feature_vae.FeatureVAE`,
a Gaussian decoder with a learned variance per dimension on features standardised by the
mean and standard deviation of its own training rows, stored with it) is trained on the
first 1 − ``holdout`` of them by the negative ELBO (:mod:`vaeood.training.feature_vae`), and
the reader is fitted on the statistics of the held-out rest, as the pixel detectors are fitted
on training images the VAE never saw. Each image's statistics are those of the pixel VAE,
computed by the same feature code on f(x):

    log p(f) ≥ ELBO (``samples`` = 8 draws), rate KL(q‖p), distortion −E_q log p(f|z),
    H[q(z|f)], −E_q log p(z), and the posterior parameters (μ(f), log σ²(f)),

all in nats of a density on R^1280 (never bits/dim: these are not 8-bit pixels). The reader
is the project's detector of that name, unchanged:

    feature_vae_nll:         S = −ELBO(f)                                        (``nll``)
    feature_vae_typicality:  S = |−ELBO(f) − Ĥ|, Ĥ the held-out mean             (``typicality``)
    feature_vae_dose:        S = −Σ_i log q̂_i(t_i), KDEs of the five statistics  (``dose``)
    feature_vae_latent:      a density or distance of (μ, log σ²) (``latent_mahalanobis`` by
                             default, or ``latent_gmm`` / ``latent_knn``: option ``reader``)

Kirichenko, Izmailov & Wilson (NeurIPS 2020), "Why normalizing flows fail to detect
out-of-distribution data": a flow fitted on a pretrained network's features detects what the
same flow on pixels misses. Nalisnick et al. (ICLR 2019) is the phenomenon measured here
again in feature space: uniform noise and constant images get a *higher* likelihood than
the training photos (docs/findings.md, "A VAE on the backbone's features"). Use these to
measure; ``feature_knn`` is the feature-space detector to decide with.

The VAE is trained inside ``fit``, not declared as a companion run: it is a function of the
fit features alone (seconds on a CPU), so it needs no run directory, checkpoint or data
pipeline of its own, and the fitted detector holds its weights as arrays (a saved fit stays
loadable). The detectors of one ``fit`` call on the same features and options share one
trained VAE (kept for the last :data:`KEEP` fits).
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference.gaussian import check_positive_int
from ..features import images_digest
from ..features.model import latent, log_px, posterior
from ..models.feature_vae import FeatureVAE
from ..training.config import ConfigError
from ..training.feature_vae import train_feature_vae
from .base import DETECTORS, make_detector
from .feature_base import FeatureDetector

#: trained VAEs kept for other detectors fitted on the same rows with the same options
KEEP = 4
#: feature rows scored at a time (bounds the [samples, rows, D] decoder output)
CHUNK = 1024
_TRAINED: dict[str, tuple[dict, list[float]]] = {}
TRAINING = ("hidden_dim", "latent_dim", "epochs", "lr", "batch_size", "seed")


def trained_state(rows: np.ndarray, options: dict) -> tuple[dict, list[float]]:
    """The trained VAE's state (arrays) and its epoch losses for ``rows``, trained once per
    (rows, training options) among the last :data:`KEEP`."""
    training = {k: options[k] for k in TRAINING}
    digest = f"{sorted(training.items())!r} {images_digest(rows)}"  # the rows' shape, dtype and bytes
    if digest not in _TRAINED:
        model, losses = train_feature_vae(rows, **training)
        _TRAINED[digest] = ({k: v.numpy().copy() for k, v in model.state_dict().items()}, losses)
        while len(_TRAINED) > KEEP:
            _TRAINED.pop(next(iter(_TRAINED)))
    return _TRAINED[digest]


def vae_statistics(model: FeatureVAE, rows: np.ndarray, samples: int, seed: int) -> dict[str, np.ndarray]:
    """The pixel VAE's ``log_px`` (ELBO of ``samples`` draws), ``posterior`` and ``latent`` features
    of feature ``rows`` ``[N, D]`` under ``model``, as float64 arrays."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[dict] = []
    with torch.no_grad():
        for start in range(0, len(rows), CHUNK):
            f = torch.as_tensor(rows[start:start + CHUNK], dtype=torch.float32)
            parts.append({**log_px(model, f, generator=generator, estimator="elbo",
                                   estimator_options={"samples": samples}),
                          **posterior(model, f), **latent(model, f)})
    return {k: np.concatenate([p[k].double().numpy() for p in parts]) for k in parts[0]}


class FeatureVAEDetector(FeatureDetector):
    """A reader detector (``reader``, one of ``readers``) on the statistics of a VAE trained on
    the fit images' backbone features (module docstring)."""

    readers: tuple[str, ...] = ()
    paper = "Kirichenko et al. NeurIPS 2020 (density of pretrained features); Nalisnick et al. ICLR 2019"

    def __init__(self, *, reader: str | None = None, reader_options: dict | None = None, hidden_dim: int = 512,
                 latent_dim: int = 32, epochs: int = 60, lr: float = 1e-3, batch_size: int = 128, samples: int = 8,
                 holdout: float = 0.2, seed: int = 0, backbone: str | None = None, size: int | None = None):
        reader = reader or self.readers[0]
        if reader not in self.readers:
            raise ConfigError(f"{self.name}: reader must be one of {', '.join(self.readers)}, got {reader!r}")
        for option, value in (("hidden_dim", hidden_dim), ("latent_dim", latent_dim), ("epochs", epochs),
                              ("batch_size", batch_size), ("samples", samples)):
            check_positive_int(f"{self.name}: {option}", value)
        if not 0.0 < float(holdout) < 1.0:
            raise ConfigError(f"{self.name}: holdout must be a fraction in (0, 1) of the fit images, got {holdout!r}")
        super().__init__(reader=reader, reader_options=dict(reader_options or {}), hidden_dim=hidden_dim,
                         latent_dim=latent_dim, epochs=epochs, lr=float(lr), batch_size=batch_size, samples=samples,
                         holdout=float(holdout), seed=seed, backbone=backbone, size=size)
        self.reader = make_detector(reader, self.options["reader_options"])

    def _fit(self, features):
        rows = self.rows(features).astype(np.float32)
        held = int(round(self.options["holdout"] * len(rows)))
        if held < 2 or len(rows) - held < 2:
            raise ConfigError(f"{self.name}: {len(rows)} fit images leave {len(rows) - held} to train the VAE and "
                              f"{held} to fit {self.options['reader']} on (at least 2 each)")
        order = np.random.default_rng(self.options["seed"]).permutation(len(rows))
        train, rest = rows[np.sort(order[held:])], rows[np.sort(order[:held])]
        self.vae_state, losses = trained_state(train, self.options)
        self.reader.fit(self._statistics(rest))
        return {"vae_images": len(train), "reader_images": held, "final_loss_nats": losses[-1],
                "reader_fit": {k: v for k, v in self.reader.fit_info.items() if k != "n"}}

    def _statistics(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if getattr(self, "_model", None) is None:
            mean = self.vae_state["feature_mean"]
            self._model = FeatureVAE(mean, self.vae_state["feature_std"], hidden_dim=self.options["hidden_dim"],
                                     latent_dim=self.options["latent_dim"])
            self._model.load_state_dict({k: torch.from_numpy(v) for k, v in self.vae_state.items()})
            self._model.eval()
        return vae_statistics(self._model, rows, self.options["samples"], self.options["seed"])

    def _score(self, features):
        return self.reader.score(self._statistics(self.rows(features)))

    def __getstate__(self):  # the model is rebuilt from the arrays: a saved fit holds no torch objects
        return {k: v for k, v in self.__dict__.items() if k != "_model"}


#: each registered name → the readers it takes (the first is its default)
READERS = {"feature_vae_nll": ("nll",), "feature_vae_typicality": ("typicality",), "feature_vae_dose": ("dose",),
           "feature_vae_latent": ("latent_mahalanobis", "latent_gmm", "latent_knn")}
for _name, _readers in READERS.items():
    # a module-level class of that name: a saved fit's class is found by its module and name
    globals()[_name] = DETECTORS.register(_name)(
        type(_name, (FeatureVAEDetector,), {"name": _name, "readers": _readers, "__module__": __name__}))

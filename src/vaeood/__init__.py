"""vaeood: does my deep generative model know what it doesn't know?

Train VAEs, estimate each image's log-likelihood honestly and turn the estimates into
per-image features, fitted out-of-distribution detectors, metrics, figures and reports.

    >>> import vaeood
    >>> run = vaeood.train(vaeood.Config(), "runs/fmnist")            # doctest: +SKIP
    >>> vaeood.evaluate(run, "fashion_mnist", ["mnist"])               # doctest: +SKIP
"""

from ._version import __version__
from .training.config import Config
from .byo import VAEAdapter, VAEProtocol, from_pythae
from .decisions import calibrate, decide
from .detectors import DETECTORS
from .evaluation.evaluate import detect, evaluate, evaluate_model, fit_detector
from .features import FEATURES, compute_features
from .experiments import reproduce
from .training.run import load_model
from .evaluation.scoring import score
from .training.train import train
from . import _moved

_moved.install()

__all__ = ["Config", "train", "score", "evaluate", "reproduce", "load_model", "compute_features", "fit_detector",
           "detect", "evaluate_model", "calibrate", "decide", "FEATURES", "DETECTORS", "VAEAdapter", "VAEProtocol",
           "from_pythae", "__version__"]

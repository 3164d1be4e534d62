"""vaeood: does my deep generative model know what it doesn't know?

Train VAEs, estimate each image's log-likelihood honestly and turn the estimates into
per-image features, fitted out-of-distribution detectors, metrics, figures and reports.

    >>> import vaeood
    >>> run = vaeood.train(vaeood.Config(), "runs/fmnist")            # doctest: +SKIP
    >>> vaeood.evaluate(run, "fashion_mnist", ["mnist"])               # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .byo import VAEAdapter, VAEProtocol, from_pythae  # noqa: E402
from .decisions import calibrate, decide  # noqa: E402
from .detectors import DETECTORS  # noqa: E402
from .evaluate import detect, evaluate, evaluate_model, fit_detector  # noqa: E402
from .features import FEATURES, compute_features  # noqa: E402
from .experiments import reproduce  # noqa: E402
from .run import load_model  # noqa: E402
from .scoring import score  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["Config", "train", "score", "evaluate", "reproduce", "load_model", "compute_features", "fit_detector",
           "detect", "evaluate_model", "calibrate", "decide", "FEATURES", "DETECTORS", "VAEAdapter", "VAEProtocol",
           "from_pythae", "__version__"]

"""vaeood: does my deep generative model know what it doesn't know?

Train VAEs, estimate each image's log-likelihood honestly and turn the estimates into
out-of-distribution scores, metrics, figures and reports.

    >>> import vaeood
    >>> run = vaeood.train(vaeood.Config(), "runs/fmnist")            # doctest: +SKIP
    >>> vaeood.evaluate(run, "fashion_mnist", ["mnist"])               # doctest: +SKIP
"""

from ._version import __version__
from .config import Config
from .evaluate import evaluate
from .experiments import reproduce
from .run import load_model
from .scoring import score
from .train import train

__all__ = ["Config", "train", "score", "evaluate", "reproduce", "load_model", "__version__"]

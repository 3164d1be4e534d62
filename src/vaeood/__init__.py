"""vaeood: does my deep generative model know what it doesn't know?

Train VAEs, estimate each image's log-likelihood honestly and turn the estimates into
per-image features, fitted out-of-distribution detectors, metrics, figures and reports.

    >>> import vaeood
    >>> det = vaeood.ImageOODDetector(epochs=10, alpha=0.05).fit(images)  # doctest: +SKIP
    >>> det.predict(new_images)                 # 1 = out-of-distribution  # doctest: +SKIP
    >>> run = vaeood.train(vaeood.Config(), "runs/fmnist")            # doctest: +SKIP
    >>> vaeood.evaluate(run, "fashion_mnist", ["mnist"])               # doctest: +SKIP

Vocabulary (one word for one thing, in the code, the command line and the reports):

* **log_px**: an estimate of log p(x) of an image under a model, in nats (a bound such
  as the ELBO, or IWAE-K), by :func:`log_px` (``vaeood log-px``); never called a score.
* **detector score**: a detector's output, one number an image, higher = more
  out-of-distribution, by :func:`detector_scores`. Of a detector that reads log p(x)
  only, e.g. ``nll``: S(x) = −log_px(x).
* **detect**: flagging images as out-of-distribution at a chosen false-alarm rate, from
  their detector scores against calibration images (:func:`decide`, ``vaeood detect``).
* **llr**: only Havtorn et al. (2021)'s hierarchical likelihood ratio LLR>k (the
  ``llr`` detector); Ren et al. (2019)'s ratio to a background model is the
  ``likelihood_ratio`` detector, its statistic the *background ratio*.
* **conform**: making images of another shape than the model's fit it, by ``"pad"``
  (zero-pad, centred) or ``"resize"`` (bilinear; grey ↔ RGB converted too).
* **n_fit**: the size of the fitting set, the held-out training images a detector that
  fits is fitted on (never test images); ``n_calibration`` beside it for calibration.
* **image digest**: the SHA-256 of a set of images' dtype, shape and bytes
  (:func:`vaeood.features.core.images_digest`, recorded as ``data_sha256`` in feature
  caches and ``calibration_images_sha256`` in calibration files).

This vocabulary is the target of 0.2. ``vaeood.score`` and ``vaeood.detect`` are the old
names of :func:`log_px` and :func:`detector_scores`, and ``vaeood score`` of ``vaeood
log-px``: they still work, with a :class:`DeprecationWarning` (a notice on stderr), and
go in 0.3. So do the old names of *conform* and *n_fit*: the keyword ``fit=`` (now
``conform=``), the config key ``data.fit`` (now ``data.conform``), the module
``vaeood.data.fit`` (now :mod:`vaeood.data.conform`), ``fit_limit=`` of :func:`evaluate`
and ``n=`` of :func:`fit_detector` (now ``n_fit=``) and ``--fit-limit`` (now ``--n-fit``).
"""

from . import _reproducible  # noqa: F401 (first: it sets MKL_CBWR before torch is imported)
from ._version import __version__
from .training.config import Config
from .byo import VAEAdapter, VAEProtocol, from_pythae
from .decisions import calibrate, decide
from .detectors import DETECTORS
from .evaluation.evaluate import detect, detector_scores, evaluate, evaluate_model, fit_detector
from .features import FEATURES, compute_features
from .experiments import reproduce
from .training.run import load_model
from .evaluation.log_px import log_px, score
from .training.train import train
from .image_detector import ImageOODDetector, load
from . import _moved

_moved.install()

__all__ = ["ImageOODDetector", "load", "Config", "train", "log_px", "evaluate", "reproduce", "load_model",
           "compute_features", "fit_detector", "detector_scores", "evaluate_model", "calibrate", "decide",
           "FEATURES", "DETECTORS", "VAEAdapter", "VAEProtocol", "from_pythae", "__version__",
           "score", "detect"]  # deprecated aliases of log_px and detector_scores (go in 0.3)

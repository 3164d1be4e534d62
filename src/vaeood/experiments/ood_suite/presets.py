"""The suite's presets (budgets), its dataset families and the detectors it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

SYNTHETIC = ("uniform_noise", "constant")
SYNTHETIC_SEED = 20_260_311  # the OOD noise/constant images: fixed, independent of the model seeds
TIN = "tinyimagenet64"  # the photo family's name, and its folder's in the data dir
TIN_OTHER = f"{TIN}_other"  # its near-OOD set: val/ photos of the classes it was not trained on


@dataclass(frozen=True)
class Family:
    """One in-distribution dataset and the OOD sets it is scored against."""

    name: str
    title: str
    ood: tuple[str, ...]  # real OOD sets that must exist
    optional_ood: tuple[str, ...] = ()  # real OOD sets used where they exist (a note otherwise)
    conform: str | None = None  # how OOD sets of another image shape are conformed to the model
    shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of the generated OOD images
    optional: bool = False  # skipped with a note when the in-distribution data is not found
    near: tuple[str, ...] = ()  # real OOD sets that are near-OOD (natural images of other classes)
    # a folder of photos in the data dir that the family's sets are written from (.photos), None: datasets
    photos: str | None = None
    rotate: bool = True  # score its own test images rotated by 90° (a generated near-OOD set)
    # False: only detectors that run on the main model alone (no background, wide, small or hierarchical
    # VAE: each one more model per seed, which 64×64 photos cannot afford within the quick budget)
    extra_models: bool = True

    @property
    def rotated(self) -> str:
        """The name of the family's own test images rotated by 90°, a generated near-OOD set."""
        return f"{self.name}_rot90"

    def kind(self, ood: str) -> str:
        """``"near"`` for sets whose pixel statistics stay typical (its own rotated images,
        natural images of other classes), else ``"far"``."""
        return "near" if ood == self.rotated or ood in self.near else "far"


FAMILIES = {
    "fashion_mnist": Family("fashion_mnist", "Fashion-MNIST", ("mnist",)),
    "mnist": Family("mnist", "MNIST", ("fashion_mnist",)),
    "cifar10": Family("cifar10", "CIFAR-10", ("mnist",), optional_ood=("tinyimagenet", "svhn"), conform="pad",
                      shape=(3, 32, 32), optional=True, near=("tinyimagenet",)),
    # Tiny ImageNet's own 64×64 photos (the data dir's tinyimagenet64/ folder, .photos): the train/ photos
    # of its 10 classes in-distribution, tested on their val/ photos against val/ photos of the other
    # classes (near) and noise and constant images (far)
    TIN: Family(TIN, "Tiny ImageNet 64", (), shape=(3, 64, 64), optional=True, near=(TIN_OTHER,), photos=TIN,
                rotate=False, extra_models=False),
}

#: the detector a user should pick (``vaeood fit``'s default): the report gives its interval on every pair
DEFAULT_DETECTOR = "fused_content"
#: its pixel view alone, reported beside it on every pair
PIXEL_DETECTOR = "fused"
#: the detectors that read the ImageNet-pretrained backbone (the report says the backbone saw ImageNet)
BACKBONE_DETECTORS = ("feature_knn", "feature_energy", "feature_gaussian", "joint_knn", "fused_content")
#: every detector the suite runs (the paper preset; the others leave out the slowest)
SUITE_DETECTORS = ("nll", "bpd", "complexity", "complexity_jxl", "likelihood_ratio", "typicality", "dose",
                     "dose_svm", "dose_plus", "lpath", "lpath_copod", "lpath_2m", "likelihood_regret", "llr",
                     "latent_gmm", "latent_knn", "latent_mahalanobis", "fused", *BACKBONE_DETECTORS)


@dataclass(frozen=True)
class SuitePreset:
    """The budget of one preset."""

    seeds: tuple[int, ...]
    train: dict[str, dict[str, str]]  # family → config overrides of its main model (shared by all four)
    test_limit: int | None  # images of each test set (None: all)
    n_fit: int  # held-out training images the fitted detectors fit on
    synthetic_images: int  # uniform-noise and constant images per family
    # model name → overrides of the config a detector declares for it (``runs_on``, ``companions``;
    # vaeood.detectors.base.ModelSpec), e.g. a smaller "wide" latent for a smaller budget
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    estimator: str = "elbo"
    estimator_options: dict = field(default_factory=dict)
    detectors: tuple[str, ...] = SUITE_DETECTORS
    detector_options: dict = field(default_factory=dict)
    allow_sample: bool = False
    families: tuple[str, ...] | None = None  # None: every family
    test_limits: dict[str, int] = field(default_factory=dict)  # family → its own test_limit
    n_fits: dict[str, int] = field(default_factory=dict)  # family → its own n_fit (and calibration size)

    def family_test_limit(self, family: str) -> int | None:
        """Images of each of ``family``'s test sets."""
        return self.test_limits.get(family, self.test_limit)

    def family_n_fit(self, family: str) -> int:
        """Held-out training images ``family``'s detectors fit on (and as many calibrate them)."""
        return self.n_fits.get(family, self.n_fit)


QUICK = {"data.limit": "10000", "train.epochs": "5"}
SMOKE = {"data.limit": "300", "train.epochs": "1", "model.base_channels": "8"}
# Tiny ImageNet 64 in the quick preset: 4,000 of its 5,000 training photos (the last 1,000 held out: 500 to
# fit the detectors on, 500 to calibrate them), 3 epochs: a 64×64×3 image costs the VAE 4× a CIFAR-10 one.
# One seed on 2 CPU cores shared with other jobs: 5 epochs took 186 s and epochs 4-5 lowered the training
# loss by 0.7%; with 3 epochs the whole seed (training, 16 detectors, their decisions) took 5 min
TIN_QUICK = {"data.limit": "4000", "train.epochs": "3"}
PRESETS = {
    # `make demo`: one seed, Fashion-MNIST only, the main model configured as fig2a quick's
    # discretised-logistic VAE (20,000 images, 4 epochs, seed 0); data.holdout keeps images to
    # fit on even on the bundled 3,000-image sample (on the real set it changes nothing: the
    # first 20,000 images are trained on either way, the last 1,000 are fitted on)
    "demo": SuitePreset(seeds=(0,), train={"fashion_mnist": {"data.limit": "20000", "train.epochs": "4",
                                                             "data.holdout": "1000"}},
                        test_limit=2000, n_fit=1000, synthetic_images=2000, allow_sample=True,
                        # the demo stays within minutes: no JPEG-XL, no regret (a per-image optimisation)
                        # and no hierarchical VAE to train (llr); the quick preset runs them
                        detectors=tuple(d for d in SUITE_DETECTORS
                                        if d not in ("complexity_jxl", "likelihood_regret", "llr")),
                        families=("fashion_mnist",)),
    # seconds, for tests and a first look at the report (numbers meaningless)
    "smoke": SuitePreset(seeds=(0, 1), train={"fashion_mnist": SMOKE, "mnist": SMOKE, "cifar10": SMOKE, TIN: SMOKE},
                         test_limit=150, n_fit=100, synthetic_images=150, allow_sample=True,
                         models={"wide": {"model.latent_dim": "32"}}),
    # every family on 10,000 training images x 5 epochs, CIFAR-10 too (of its 50,000; the images after
    # them are held out to fit and calibrate on); BENCHMARKS.md has its wall time on 2 CPU cores
    "quick": SuitePreset(
        seeds=(0, 1, 2),
        train={"fashion_mnist": QUICK, "mnist": QUICK, "cifar10": QUICK, TIN: TIN_QUICK},
        test_limit=2000, n_fit=2000, synthetic_images=2000, allow_sample=True,
        # CIFAR-10's OOD sets as large as its 1,000 test images (all that are here) — balanced classes;
        # Tiny ImageNet's 500 validation photos of its classes against 500 of the other classes'
        test_limits={"cifar10": 1000, TIN: 500}, n_fits={TIN: 500},
        # two per-image costs run in the paper preset only: JPEG-XL at effort 9 (~40 ms per 28×28 image on
        # a loaded 2-core machine, more than the rest of the suite together) and likelihood regret (a
        # per-image optimisation, 8–17 ms an image: 2.6 min of the 24.5-min quick suite in its test sets,
        # as much again in its calibrations, for AUROCs of 0.51–0.8; its numbers stay in the paper preset)
        detectors=tuple(d for d in SUITE_DETECTORS if d not in ("complexity_jxl", "likelihood_regret"))),
    "paper": SuitePreset(
        seeds=(0, 1, 2),
        train={"fashion_mnist": {"data.holdout": "5000", "train.epochs": "100"},
               "mnist": {"data.holdout": "5000", "train.epochs": "100"},
               "cifar10": {"data.holdout": "5000", "train.epochs": "100", "model.base_channels": "64",
                           "model.latent_dim": "64"},
               TIN: {"data.holdout": "1000", "train.epochs": "100", "model.base_channels": "64",
                     "model.latent_dim": "64"}},
        test_limit=None, n_fit=5000, synthetic_images=10000, n_fits={TIN: 500},
        estimator="iwae", estimator_options={"k": 1000},
        models={"wide": {"model.latent_dim": "512"}, "small": {"model.latent_dim": "2"}}),
}


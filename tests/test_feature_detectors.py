"""The feature-space detectors and the pixel-and-content default: exact answers on hand-made
features, and the combination rule keeping each view where the other is blind."""

from __future__ import annotations

import numpy as np
import pytest

from vaeood.detectors import make_detector
from vaeood.evaluation.metrics import ood_metrics
from vaeood.training.config import ConfigError


def feats(f: np.ndarray) -> dict:
    return {"backbone_features": np.asarray(f, dtype=np.float64)}


def test_feature_knn_is_the_mean_cosine_distance_to_the_k_nearest():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    knn = make_detector("feature_knn").fit(feats(ref))
    probes = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    # probe 1: distances 0 (to e1), 1 − 1/√2 (to (1,1,0)/√2), 1, 1 → mean of the 2 nearest
    # probe 2: −e3 is at distance 1 from e1, e2, (1,1,0)/√2 and 2 from e3
    np.testing.assert_allclose(knn.score(feats(probes)), [(1 - 1 / np.sqrt(2)) / 2, 1.0], rtol=1e-12)
    one = make_detector("feature_knn", {"k": 1}).fit(feats(ref))
    np.testing.assert_allclose(one.score(feats(probes)), [0.0, 1.0], atol=1e-12)
    with pytest.raises(ConfigError, match="only 4 fit images"):
        make_detector("feature_knn", {"k": 5}).fit(feats(ref))
    with pytest.raises(ConfigError, match="k must be"):
        make_detector("feature_knn", {"k": 0})


def ledoit_wolf_by_hand(x: np.ndarray) -> np.ndarray:
    """Σ̂ = δ μ I + (1 − δ) S of Ledoit & Wolf (2004, Lemma 3.2 and Theorem 3.1), from its formulas."""
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2) / p
    b2_bar = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n ** 2 / p
    delta = min(b2_bar, d2) / d2
    return delta * mu * np.eye(p) + (1 - delta) * s


def test_feature_gaussian_is_the_mahalanobis_distance_under_ledoit_wolf():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 6)) @ rng.normal(0, 1, (6, 6)) + 3.0  # few rows for 6 dims: shrinkage matters
    gauss = make_detector("feature_gaussian").fit(feats(x))
    probes = rng.normal(3, 2, (5, 6))
    t = probes - x.mean(0)
    expected = np.einsum("ni,ij,nj->n", t, np.linalg.inv(ledoit_wolf_by_hand(x)), t)
    np.testing.assert_allclose(gauss.score(feats(probes)), expected, rtol=1e-8)
    assert 0 < gauss.fit_info["shrinkage"] < 1


def test_feature_gaussian_log_density_is_scipys_normal_logpdf_under_ledoit_wolf():
    from scipy.stats import multivariate_normal
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (30, 8)) @ rng.normal(0, 1, (8, 8)) - 2.0
    gauss = make_detector("feature_gaussian").fit(feats(x))
    probes = rng.normal(-2, 3, (6, 8))
    expected = multivariate_normal(x.mean(0), LedoitWolf(store_precision=False).fit(x).covariance_).logpdf(probes)
    np.testing.assert_allclose(gauss.log_density_nats(feats(probes)), expected, rtol=1e-10)


def two_views(n: int, seed: int, content: float = 0.0, pixel: float = 0.0) -> dict:
    """Hand-made features of both views: the pixel view's latent means (``pixel`` shifts them
    far away), the content view's features on a sphere around 8 class centres (``content``
    moves an image part of the way to a direction no class has)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1, (8, 16))
    labels = rng.integers(0, 8, n)
    f = centres[labels] + rng.normal(0, 0.6, (n, 16))
    f[:, 15] += content * 3.0
    mu = rng.normal(0, 1, (n, 3)) + pixel
    return {"backbone_features": f, "latent_mu": mu, "latent_logvar": np.zeros_like(mu), "labels": labels}


COMPONENTS = ["latent_mahalanobis", "feature_knn"]  # a quick pixel view; the default one is `fused`


def test_fused_content_rules_by_hand():
    fit = two_views(1500, 0)
    probe = two_views(50, 1, content=0.5, pixel=1.0)
    for rule in ("truncated", "fisher", "min_p"):
        det = make_detector("fused_content", {"components": COMPONENTS, "rule": rule}).fit(fit)
        log_px, log_c = det.component_log_p(probe).values()
        expected = {"truncated": -log_c + np.maximum(0.0, np.log(0.05) - log_px),
                    "fisher": -2 * (log_px + log_c), "min_p": np.maximum(-log_px, -log_c)}[rule]
        np.testing.assert_allclose(det.score(probe), expected, rtol=1e-12)
    for bad in ({"rule": "max"}, {"pixel_tail": 0.0}, {"components": ["fused"]},
                {"components": ["fused", "feature_knn", "feature_knn"]},
                # two content detectors on different backbones would ask for one feature twice
                {"component_options": {"feature_knn": {"size": 96}}}):
        with pytest.raises(ConfigError, match="fused_content"):
            make_detector("fused_content", bad)


def test_fused_content_keeps_the_content_view_where_the_pixel_view_is_blind_and_flags_broken_images():
    fit = two_views(2000, 0)
    normal = two_views(1000, 1)
    different = two_views(1000, 2, content=0.9)  # content moved a little, pixels typical
    broken = two_views(1000, 3, pixel=8.0)  # pixels far off, content typical
    knn = make_detector("feature_knn").fit(fit)
    content_alone = ood_metrics(knn.score(normal), knn.score(different))["auroc"]
    assert 0.75 < content_alone < 0.95  # a hard case, where adding noise costs AUROC
    auroc = {}
    for rule in ("truncated", "fisher", "min_p"):
        det = make_detector("fused_content", {"components": COMPONENTS, "rule": rule}).fit(fit)
        s = det.score(normal)
        auroc[rule] = ood_metrics(s, det.score(different))["auroc"]
        assert ood_metrics(s, det.score(broken))["auroc"] > 0.999
    assert auroc["truncated"] > content_alone - 0.02
    assert auroc["truncated"] > max(auroc["fisher"], auroc["min_p"]) + 0.02  # measured: 0.847 against 0.804, 0.805


def test_joint_knn_is_the_knn_distance_over_both_views_each_in_units_of_its_pairwise_spread():
    """``joint_knn`` by hand (scipy's pdist/cdist): unit features and standardised pixel
    statistics, each block divided by its median pairwise distance among the fit images."""
    from scipy.spatial.distance import cdist, pdist

    rng = np.random.default_rng(0)
    names = ("log_px_nats", "png_bpd", "recon_log_l2")

    def both(n, shift=0.0):
        f = rng.normal(size=(n, 6)) + 3.0
        return {"backbone_features": f, **{s: rng.normal(size=n) * (i + 1) + shift for i, s in enumerate(names)}}

    fit, test = both(30), both(5, shift=20.0)
    det = make_detector("joint_knn").fit(fit)
    unit = lambda d: d["backbone_features"] / np.linalg.norm(d["backbone_features"], axis=1, keepdims=True)  # noqa: E731
    raw = np.stack([fit[s] for s in names], 1)
    mean, sd = raw.mean(0), raw.std(0)
    stats = lambda d: (np.stack([d[s] for s in names], 1) - mean) / sd  # noqa: E731
    su, st = np.median(pdist(unit(fit))), np.median(pdist(stats(fit)))
    d = np.sqrt(cdist(unit(test), unit(fit)) ** 2 / su ** 2 + cdist(stats(test), stats(fit)) ** 2 / st ** 2)
    np.testing.assert_allclose(det.score(test), np.sort(d, axis=1)[:, :2].mean(1), rtol=1e-9)
    assert det.fit_info["scale_content"] == pytest.approx(su) and det.fit_info["scale_pixels"] == pytest.approx(st)
    # the shifted statistics put the test images far in the pixel block: above every fit image's
    # distance to the others
    assert det.score(test).min() > det.score(both(30)).max()
    with pytest.raises(ConfigError, match="needs more fit images"):
        make_detector("joint_knn", {"k": 30}).fit(fit)


def test_the_named_rules_refuse_another_rule():
    assert make_detector("fused_content_fisher").options["rule"] == "fisher"
    assert make_detector("fused_content_min_p").options["rule"] == "min_p"
    with pytest.raises(ConfigError, match="takes no option 'rule'"):  # not obeyed under a name that says otherwise
        make_detector("fused_content_fisher", {"rule": "min_p"})


def test_a_feature_detector_keeps_the_backbone_size_it_was_made_with_when_the_default_moves(monkeypatch):
    from vaeood.detectors import feature_base
    from vaeood.features.backbone import DEFAULT_SIZE

    made = make_detector("feature_knn")
    assert made.options["size"] == DEFAULT_SIZE and made.needs["backbone"]["size"] == DEFAULT_SIZE
    monkeypatch.setattr(feature_base, "DEFAULT_SIZE", DEFAULT_SIZE // 2)  # a later vaeood's default
    assert made.needs["backbone"]["size"] == DEFAULT_SIZE  # as fitted, e.g. restored from a saved fit
    assert make_detector("feature_knn").needs["backbone"]["size"] == DEFAULT_SIZE // 2
    assert make_detector("feature_knn", {"size": 96}).needs["backbone"]["size"] == 96


@pytest.mark.parametrize("name", ["feature_knn", "feature_gaussian", "joint_knn"])
def test_a_backbone_is_chosen_by_its_registered_name_and_an_unknown_one_is_refused_when_the_detector_is_made(name):
    assert make_detector(name, {"backbone": "efficientnet_lite2"}).needs["backbone"]["name"] == "efficientnet_lite2"
    with pytest.raises(ConfigError, match="backbone must be one of efficientnet_lite0, efficientnet_lite2, got 'nope'"):
        make_detector(name, {"backbone": "nope"})


def unit(f: np.ndarray) -> np.ndarray:
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_feature_energy_is_the_free_energy_of_a_logistic_regression_on_unit_features():
    from scipy.special import logsumexp
    from sklearn.linear_model import LogisticRegression

    fit, probe = two_views(400, 0), two_views(30, 1, content=0.8)
    det = make_detector("feature_energy").fit(fit)
    lr = LogisticRegression(C=10.0, solver="lbfgs", max_iter=5000, tol=1e-10).fit(unit(fit["backbone_features"]),
                                                                                 fit["labels"])
    # the same penalised optimum by another solver: energies agree to the solvers' tolerance
    expected = -logsumexp(lr.decision_function(unit(probe["backbone_features"])), axis=1)
    np.testing.assert_allclose(det.score(probe), expected, atol=5e-3)
    assert det.fit_info == {"n": 400, "classes": 8}
    # an image between the classes is claimed less strongly than one at a class centre
    centres = np.random.default_rng(99).normal(0, 1, (8, 16))
    between = centres[:4].mean(0, keepdims=True)
    assert det.score(feats(between))[0] > det.score(feats(centres)).max()


def test_feature_energy_with_two_classes_is_the_symmetric_multinomial_of_the_binary_model():
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, (50, 5)) + [3, 0, 0, 0, 0], rng.normal(0, 1, (50, 5)) + [0, 3, 0, 0, 0]]
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    det = make_detector("feature_energy").fit({"backbone_features": x, "labels": y})
    probe = rng.normal(0, 2, (7, 5))
    z = unit(probe) @ det.weights + det.bias
    from sklearn.linear_model import LogisticRegression
    lr = LogisticRegression(C=10.0, solver="newton-cg").fit(unit(x), y)
    a = lr.decision_function(unit(probe))
    np.testing.assert_allclose(z, np.c_[-a / 2, a / 2], rtol=1e-12)  # softmax(z) = predict_proba, z summing to 0
    np.testing.assert_allclose(det.score(feats(probe)), -np.logaddexp(-a / 2, a / 2), rtol=1e-12)


@pytest.mark.parametrize("labels, why", [(None, "carry no class labels"), (-1, "unlabelled"),
                                         (0, "hold 1 class of at least 10 images \\(1 in all\\)"),
                                         ("few", "hold 1 class of at least 10 images \\(2 in all\\)")])
def test_feature_energy_refuses_fit_images_without_two_labelled_classes(labels, why):
    f = np.random.default_rng(0).normal(size=(60, 4))
    y = {None: None, -1: np.full(60, -1), 0: np.zeros(60, int), "few": np.r_[np.zeros(51, int), np.ones(9, int)]}
    with pytest.raises(ConfigError, match=f"feature_energy: .*{why}"):
        make_detector("feature_energy").fit({"backbone_features": f, "labels": y[labels]})
    for bad in (0, -1.0, float("nan"), True, "10"):
        with pytest.raises(ConfigError, match="C .*must be a number > 0"):
            make_detector("feature_energy", {"C": bad})


def test_feature_energy_says_it_does_not_apply_where_the_fit_slice_has_too_few_classes():
    """``vaeood evaluate`` and the suite pass the fit slice's class counts: the detector is then
    skipped with its reason instead of failing when it fits."""
    det = make_detector("feature_energy")
    info = {"has_fit_data": True}
    assert det.why_not({**info, "fit_class_counts": {0: 50, 1: 10}}) is None
    assert "hold 1 class of at least 10 images (2 in all)" in det.why_not({**info, "fit_class_counts": {0: 50, 1: 9}})
    assert "unlabelled" in det.why_not({**info, "fit_class_counts": {-1: 500}})
    assert det.why_not(info) is None  # not known: the fit decides


def test_feature_energy_leaves_a_class_of_fewer_than_ten_fit_images_out_of_its_classifier():
    fit = two_views(400, 0)
    rare = {**fit, "labels": np.where(np.arange(400) < 5, 8, fit["labels"])}  # class 8: five images
    det = make_detector("feature_energy").fit(rare)
    assert det.fit_info == {"n": 400, "classes": 8, "images_left_out": 5} and det.weights.shape == (16, 8)
    kept = np.arange(5, 400)
    alone = make_detector("feature_energy").fit({k: v[kept] for k, v in fit.items()})
    probe = two_views(20, 1)
    np.testing.assert_allclose(det.score(probe), alone.score(probe), rtol=1e-12)


CONTENT = ["latent_mahalanobis", "feature_knn", "feature_energy"]  # the default's content view, a quick pixel view


def test_fused_content_adds_the_energy_where_the_fit_images_have_classes_and_drops_it_where_not():
    fit, probe = two_views(1500, 0), two_views(50, 1, content=0.5, pixel=1.0)
    det = make_detector("fused_content", {"components": CONTENT}).fit(fit)
    log_px, log_k, log_e = det.component_log_p(probe).values()
    np.testing.assert_allclose(det.score(probe), -(log_k + log_e) + np.maximum(0.0, np.log(0.05) - log_px),
                               rtol=1e-12)
    assert det.fit_info["feature_energy"] == {"classes": 8} and "content_without" not in det.fit_info
    # one class among the fit images: the content view is feature_knn alone, exactly the two-view detector
    one = {**fit, "labels": np.zeros(1500, int)}
    dropped = make_detector("fused_content", {"components": CONTENT}).fit(one)
    two = make_detector("fused_content", {"components": CONTENT[:2]}).fit(one)
    np.testing.assert_array_equal(dropped.score(probe), two.score(probe))
    assert dropped.options["components"] == CONTENT and dropped.frozen_options()["components"] == CONTENT[:2]
    refit = make_detector("fused_content", dropped.frozen_options()).fit(fit)  # labelled images: the drop repeats
    assert list(refit.parts) == CONTENT[:2]
    assert "hold 1 class" in dropped.fit_info["content_without"]["feature_energy"]
    # labels that do not follow the features: the out-of-fold classifier is at chance, so it is dropped
    shuffled = {**fit, "labels": np.random.default_rng(5).permutation(fit["labels"])}
    noise = make_detector("fused_content", {"components": CONTENT}).fit(shuffled)
    assert list(noise.parts) == CONTENT[:2]
    assert "no better than chance" in noise.fit_info["content_without"]["feature_energy"]
    assert make_detector("feature_energy").chance_level(fit) is None  # the true labels: far above it
    with pytest.raises(ConfigError, match="content view is feature_energy alone"):
        make_detector("fused_content", {"components": ["latent_mahalanobis", "feature_energy"]}).fit(one)


def test_the_energy_sees_a_new_class_between_the_known_ones_better_than_the_distance_to_the_nearest():
    """Toy classes on a sphere; the new class lies between two known ones, within their spread:
    its images find near neighbours among both, but a classifier claims them weakly."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(0, 1, (5, 32)))

    def draw(c, n):
        y = rng.integers(0, len(c), n)
        return {"backbone_features": c[y] + rng.normal(0, 0.2, (n, 32)), "labels": y}
    fit, normal, new = draw(centres, 1000), draw(centres, 500), draw(unit(centres[:2].mean(0, keepdims=True)), 500)
    auroc = {name: ood_metrics(d.score(normal), d.score(new))["auroc"]
             for name, d in ((n, make_detector(n).fit(fit)) for n in ("feature_knn", "feature_energy"))}
    assert auroc["feature_energy"] > auroc["feature_knn"] + 0.05  # measured: 0.918 against 0.819

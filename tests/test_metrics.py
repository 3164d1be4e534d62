"""OOD metrics on hand-made scores with exact answers (OOD positive, higher = more OOD)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vaeood.evaluation.metrics import fpr_at_tpr, ood_metrics


def test_perfect_separation():
    m = ood_metrics(np.arange(10.0), np.arange(10.0) + 100)
    assert m == pytest.approx({"auroc": 1.0, "auprc_in": 1.0, "auprc_out": 1.0, "fpr_at_80_tpr": 0.0,
                               "fpr_at_95_tpr": 0.0}, abs=1e-12)


def test_fully_inverted_scores():
    m = ood_metrics(np.arange(10.0) + 100, np.arange(10.0))
    assert m["auroc"] == 0.0
    assert m["fpr_at_95_tpr"] == 1.0


def test_hand_computed_overlap_with_ties():
    # in = 0..3, ood = 2..5: of 16 (ood, in) pairs, 13 have ood > in and 2 tie → (13 + 2/2) / 16
    m = ood_metrics(np.array([0.0, 1, 2, 3]), np.array([2.0, 3, 4, 5]))
    assert m["auroc"] == pytest.approx(14 / 16)
    # flagging all four OOD images needs threshold 2, which also flags in-dist 2 and 3
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)
    assert m["fpr_at_80_tpr"] == pytest.approx(0.5)
    # threshold 4 flags 2 of 4 OOD (50 % TPR) and no in-distribution image
    labels = np.r_[np.zeros(4), np.ones(4)]
    assert fpr_at_tpr(labels, np.r_[0.0, 1, 2, 3, 2, 3, 4, 5], 0.5) == 0.0


def test_fpr_at_tpr_on_ten_ood_images():
    # in-distribution scores 0..9; OOD scores 5..14. 80 % TPR = 8 of 10 OOD → threshold 7,
    # flagging in-dist 7, 8, 9 → FPR 0.3; 95 % → all ten → threshold 5 → FPR 0.5
    m = ood_metrics(np.arange(10.0), np.arange(5.0, 15.0))
    assert m["fpr_at_80_tpr"] == pytest.approx(0.3)
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="OOD scores contain 1 NaN"):
        ood_metrics(np.zeros(3), np.array([1.0, np.nan]))


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 30), elements=finite), arrays(np.float64, st.integers(1, 30), elements=finite))
def test_swapping_roles_gives_one_minus_auroc(s_in, s_ood):
    a = ood_metrics(s_in, s_ood)["auroc"]
    b = ood_metrics(s_ood, s_in)["auroc"]
    assert a + b == pytest.approx(1.0)
    assert 0.0 <= a <= 1.0


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.integers(2, 30), elements=finite), st.floats(0.1, 10), st.floats(-5, 5))
def test_metrics_invariant_to_increasing_affine_maps(s, scale, shift):
    s_in, s_ood = s[: len(s) // 2 + 1], s[len(s) // 2:]
    a = ood_metrics(s_in, s_ood)
    b = ood_metrics(s_in * scale + shift, s_ood * scale + shift)
    # affine maps can merge nearly-equal floats, so compare AUROC only where no ties are created
    if len(np.unique(s)) == len(np.unique(s * scale + shift)):
        assert a["auroc"] == pytest.approx(b["auroc"])

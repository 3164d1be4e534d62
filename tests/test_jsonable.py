"""strict_json: the one conversion of recorded values to strict JSON."""

import json
import math
from pathlib import Path

import numpy as np

from vaeood.infra.jsonable import strict_json


def test_strict_json_is_what_json_reads_back_with_no_nan():
    value = {"run": Path("runs/bg"), "sizes": (1, 2), 3: "x", "nested": [{"k": (0.5,)}],
             "nan": math.nan, "inf": -math.inf, "n": np.int64(7), "f": np.float64(0.25), "none": None}
    got = strict_json(value)
    assert got == {"run": "runs/bg", "sizes": [1, 2], "3": "x", "nested": [{"k": [0.5]}], "nan": None, "inf": None,
                   "n": "7", "f": 0.25, "none": None}
    assert json.loads(json.dumps(got, allow_nan=False)) == got  # strict JSON, and a fixed point
    assert strict_json(got) == got


def test_recorded_detector_options_keep_their_values():
    """Calibration records hold options converted this way: a record written before reads equal."""
    options = {"background_run": Path("/r/bg"), "estimator_options": {"k": 8}, "layers": (0, 1)}
    assert strict_json(options) == json.loads(json.dumps(options, default=str))

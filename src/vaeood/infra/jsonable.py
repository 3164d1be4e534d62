"""Values as strict JSON holds them (:func:`strict_json`): what is recorded in calibration
files, metrics and reports, so that a value read back equals the value recorded."""

from __future__ import annotations

import json


def strict_json(value):
    """``value`` as strict JSON holds it: tuples as lists, dict keys as strings, NaN and ±inf
    as None (strict JSON has no such numbers), and anything JSON has no type for (a path,
    a model, a NumPy integer) as its ``str``: the round trip ``json.loads(json.dumps(v))``."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)

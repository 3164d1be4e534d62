"""Every reproduction's report states its wall time (vaeood.experiments.timing)."""

from __future__ import annotations

import json
import time

from vaeood.experiments.timing import Timing, load_text


def test_the_wall_time_is_appended_to_the_report_and_the_metrics(tmp_path):
    (tmp_path / "report.md").write_text("# A report\n\nMade by `vaeood reproduce x`.\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"experiment": "x"}))
    with Timing(tmp_path) as t:
        time.sleep(0.2)
    t.append_to()
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# A report\n\nMade by `vaeood reproduce x`.\n\n## Wall time\n\n0 min 00 s wall")
    assert "from nothing (no runs to reuse)" in report
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["experiment"] == "x" and 0.2 <= metrics["timing"]["wall_seconds"] < 5
    (tmp_path / "runs").mkdir()  # a second call finds the runs of the first
    with Timing(tmp_path) as again:
        pass
    again.append_to()
    assert "runs found in `runs/` (the set-up section says which were reused)" in (tmp_path / "report.md").read_text()


def test_a_shared_machine_is_said():
    assert load_text([0.2, 0.3], 2) == "0.2 at the start and 0.3 at the end"
    assert "other jobs shared the machine" in load_text([4.0, 5.1], 2)
    assert load_text([None, None], 2) == "unknown"

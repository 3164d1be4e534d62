"""BENCHMARKS.md is generated from benchmarks/results/*.json: the committed results
render, and the committed file holds exactly what they render to."""

from __future__ import annotations


def test_committed_results_render_into_the_committed_benchmarks_md():
    import run_all  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    generated = run_all.tables()
    for heading in ("### Goals on 2 CPU cores", "### IWAE-1000 scoring", "### bf16 training",
                    "### On one GPU", "#### Training the Fig. 2b paper preset", "#### GPU against CPU"):
        assert heading in generated
    assert generated in run_all.MARKDOWN.read_text()

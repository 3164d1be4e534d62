"""BENCHMARKS.md is generated from benchmarks/results/*.json: the committed results
render, and the committed file holds exactly what they render to, goals first."""

from __future__ import annotations


def test_committed_results_render_into_the_committed_benchmarks_md():
    import run_all  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    generated = run_all.tables()
    assert list(generated) == ["goals", "tables"]
    for heading in ("### On 2 CPU cores", "### On one GPU"):
        assert heading in generated["goals"]
    for heading in ("### IWAE-1000 scoring", "### bf16 training", "#### Training the Fig. 2b paper preset",
                    "#### GPU against CPU"):
        assert heading in generated["tables"]
    text = run_all.MARKDOWN.read_text()
    assert generated["goals"] in text and generated["tables"] in text
    # the file opens with its goals: nothing but the title and a short introduction before them
    assert text.index(generated["goals"]) < min(text.index("## Commands"), text.index(generated["tables"]))
    assert text.index(generated["goals"]) < 600


def test_every_benchmark_script_is_run_by_run_all_or_named_in_benchmarks_md():
    import run_all

    scripts = {p.stem for p in run_all.HERE.glob("*.py")} - {"common", "run_all"}
    run = {run_all.SCRIPTS.get(name, name) for preset in run_all.PRESETS.values() for name in preset}
    named = {s for s in scripts if f"{s}.py" in run_all.MARKDOWN.read_text()}
    assert scripts <= run | named, sorted(scripts - run - named)
    assert run <= scripts  # and run_all names no script that is gone

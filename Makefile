# The two commands of the README: `make demo` and `make test`. Each creates the
# virtualenv and installs vaeood into it first (torch pinned to the CPU wheel by
# constraints.txt), so both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: demo test bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(VENV)/bin/vaeood reproduce fig2a --preset quick --out $(DEMO_OUT)

test: $(INSTALLED)
	$(PY) -m pytest -q

bench: $(INSTALLED)
	$(PY) -m pip install --quiet -c constraints.txt -r benchmarks/requirements.txt
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)

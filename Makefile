# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU wheel that lies on the build machines' disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test venv-demo venv-test clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	touch $@

# The demo needs only the runtime (numpy, OpenCV, tifffile) and ONNX Runtime on CPU.
$(VENV)/.demo: $(VENV)/.base pyproject.toml $(wildcard setup.py)
	$(PIP) install -q -e ".[cpu]"
	touch $@

# Tests need everything: CPU torch first (pinned), then the package with all CPU-side extras.
$(VENV)/.test: $(VENV)/.base pyproject.toml $(wildcard setup.py)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[cpu,train,export,bench,dev]" "$(TORCH)"
	touch $@

venv-demo: $(VENV)/.demo
venv-test: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m phaseedge.demo --out demo_out

test: $(VENV)/.test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info demo_out

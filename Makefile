# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU wheel that lies on the build machines' disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

# PyTriton bundles a real tritonserver (Python backend) that tests/test_triton.py serves from on
# 127.0.0.1; it pins numpy<2, so it gets an environment of its own (phaseedge.bench.triton finds it).
TRITON_VENV := .venv-triton

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
	$(PIP) install -q -e ".[cpu,train,export,bench,dev,triton,ray]" "$(TORCH)"
	touch $@

$(TRITON_VENV)/.ready:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.17"
	touch $@

venv-demo: $(VENV)/.demo
venv-test: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m phaseedge.demo --out demo_out

test: $(VENV)/.test $(TRITON_VENV)/.ready
	PHASEEDGE_TRITON_PYTHON=$(CURDIR)/$(TRITON_VENV)/bin/python $(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info demo_out

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

# napari (tests/test_napari.py, scripts/napari_screenshot.py) needs an X server with OpenGL and the
# xcb libraries Qt loads: Xvfb + Mesa from Debian. `make test` installs what is missing when it runs
# as root (CI does), otherwise names it, and runs pytest under xvfb-run when that exists.
GUI_DEBS := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3 libfontconfig1 fonts-dejavu-core

.PHONY: demo test venv-demo venv-test gui-deps lint clean

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
	$(PIP) install -q -e ".[cpu,train,export,bench,dev,triton,ray,napari]" "$(TORCH)"
	touch $@

$(TRITON_VENV)/.ready:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.17"
	touch $@

venv-demo: $(VENV)/.demo
venv-test: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m phaseedge.demo --out demo_out

gui-deps:
	@command -v dpkg-query >/dev/null || { echo "not Debian: install Xvfb and Mesa OpenGL for the napari tests"; exit 0; }; \
	missing=$$(for p in $(GUI_DEBS); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing for the napari tests:" $$missing; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	else echo "the napari tests need these Debian packages (apt-get install them as root):" $$missing; fi

lint: $(VENV)/.test
	$(PY) -m ruff check .

test: lint $(TRITON_VENV)/.ready gui-deps
	PHASEEDGE_TRITON_PYTHON=$(CURDIR)/$(TRITON_VENV)/bin/python $$(command -v xvfb-run >/dev/null && echo xvfb-run -a) \
		$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info demo_out

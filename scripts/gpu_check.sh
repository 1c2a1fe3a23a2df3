#!/usr/bin/env bash
# Run every GPU path installed on this machine and print one table (docs/gpu.md).
#
#   scripts/gpu_check.sh [OUT_DIR]          default OUT_DIR: gpu_check_out
#
# For a tiny SAM+PLM (sam-tiny), a tiny U-Net+PLM (unet-tiny) and the full SAM-B+PLM
# architecture (sam-vit-b, tile 512; random weights, which is enough for speed and for
# graph/engine checks): checkpoint ->
# phaseedge-export onnx -> fp16 -> trt (TensorRT and/or TensorRT-RTX) -> run the engine
# with phaseedge's TensorRT backend against ONNX Runtime fp32 on the CPU; ONNX Runtime's
# CUDA and TensorRT execution providers; PyTorch on CUDA; phaseedge-export check;
# phaseedge-bench latency. Then the GPU-marked tests. Whatever is not installed is
# skipped with the reason. Needs no network once the wheels are installed.
#
# What a lent device of this workplace can verify (an H100/H200, compute capability 9.0):
# PyTorch on CUDA, ONNX Runtime's CUDA provider (install the onnxruntime-gpu wheel first; it
# cannot share an environment with onnxruntime) and the GPU-marked tests. TensorRT proper
# cannot be installed there (its wheels come from NVIDIA's index, unreachable), and
# TensorRT-RTX engines do not run on data-centre GPUs (7.5 / 8.6 / 8.9 / 12.x only): their
# steps build where the builder runs and report SKIP "not for this GPU". On such a device,
# run with FULL=0 to stay well under 8 minutes in one pass.
#
# Environment: PYTHON (default .venv/bin/python, else python3), FULL=0 to leave out the
# full-size SAM-B, STEP_TIMEOUT (seconds per step, default 1800).
# Exit status: 0 when nothing failed (skips are fine: without a GPU everything is
# skipped), 1 when a step failed; logs of each step are in OUT_DIR/logs/.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
OUT=${1:-gpu_check_out}
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
FULL=${FULL:-1}
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
BIN=$(dirname "$(command -v "$PY")")

MODELS=(tiny unet sam-b)
declare -A ARCH=([tiny]=sam-tiny [unet]=unet-tiny [sam-b]=sam-vit-b)
declare -A TILE=([tiny]=64 [unet]=64 [sam-b]=512)
MODEL_STEPS=(checkpoint onnx fp16 trt-build trt-run rtx-build rtx-run ort-cuda ort-tensorrt torch-cuda check latency)
ROWS=()

record() { ROWS+=("$1|$2|$3|$4|$5"); }             # step model status seconds note
skip() { record "$1" "$2" SKIP - "$3"; }

# run_step STEP MODEL CMD...: log to OUT/logs; the note is the command's last "RESULT " line
run_step() {
    local step=$1 model=$2 log rc t0 status note
    shift 2
    log="$OUT/logs/$step-$model.log"
    t0=$SECONDS
    echo ">> $step ($model)" >&2
    timeout "$STEP_TIMEOUT" "$@" >"$log" 2>&1
    rc=$?
    note=$(grep -E '^RESULT ' "$log" | tail -n 1 | cut -c8-)
    if ((rc == 0)); then status=PASS
    elif ((rc == 3)); then status=SKIP  # a helper found the step does not apply here; the note says why
    else
        status=FAIL
        if ((rc == 124)); then note="timed out after ${STEP_TIMEOUT}s"
        elif [[ -z $note ]]; then note="exit $rc: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-110)"
        fi
    fi
    [[ -z $note ]] && note="log: $log"
    record "$step" "$model" "$status" "$((SECONDS - t0))s" "$note"
    [[ $status == PASS ]]
}

print_table() {
    local pass=0 fail=0 skipped=0 row step model status secs note
    echo
    echo "| step | model | status | time | note |"
    echo "|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r step model status secs note <<<"$row"
        echo "| $step | $model | $status | $secs | $note |"
        case $status in PASS) ((pass++)) ;; FAIL) ((fail++)) ;; *) ((skipped++)) ;; esac
    done
    echo
    echo "gpu_check: $pass PASS, $fail FAIL, $skipped SKIP"
    ((fail == 0))
}

# ----------------------------------------------------------------------------- is there a GPU at all?
NGPU=$("$PY" -c "from phaseedge.gpu import cuda_device_count; print(cuda_device_count())" 2>/dev/null) || NGPU=""
if [[ -z $NGPU ]]; then
    echo "cannot import phaseedge with $PY: install the project first (make test, or pip install -e .)" >&2
    exit 1
fi
if ((NGPU == 0)); then
    why="no NVIDIA GPU / CUDA driver on this machine (libcuda.so.1 absent or no device)"
    echo "gpu_check: $why; every GPU path is skipped"
    for s in "${MODEL_STEPS[@]}"; do skip "$s" "${MODELS[*]}" "$why"; done
    skip pytest-gpu all "$why"
    print_table
    exit 0
fi

mkdir -p "$OUT/logs"
{
    echo "gpu_check on $(uname -n) at $(date -u +%Y-%m-%dT%H:%MZ), $NGPU CUDA device(s)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    CC=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
    case ${CC:-} in
        7.5|8.6|8.9|12.*) echo "RTX-class GPU ($CC): TensorRT-RTX engines can run here" ;;
        ?*) echo "compute capability $CC: TensorRT-RTX engines do not run here (RTX-class only); verifiable: PyTorch CUDA, ONNX Runtime CUDA, GPU tests" ;;
    esac
} | tee "$OUT/machine.txt"

# ----------------------------------------------------------------------------- what is installed
eval "$("$PY" - <<'EOF'
import importlib.util


def has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


providers = []
if has("onnxruntime"):
    import onnxruntime

    providers = onnxruntime.get_available_providers()
print(f"HAS_TRT={int(has('tensorrt'))} HAS_RTX={int(has('tensorrt_rtx'))} HAS_TORCH={int(has('torch'))}")
print(f"HAS_CUDAPY={int(has('cuda.bindings') or has('cuda.cudart'))} HAS_ORT={int(has('onnxruntime'))}")
print(f"ORT_CUDA={int('CUDAExecutionProvider' in providers)} ORT_TRT={int('TensorrtExecutionProvider' in providers)}")
EOF
)"
TORCH_CUDA=0
if ((HAS_TORCH)); then
    TORCH_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
fi
cli() { if [[ -x $BIN/$1 ]]; then echo "$BIN/$1"; else command -v "$1" || true; fi; }
EXPORT=$(cli phaseedge-export)
BENCH=$(cli phaseedge-bench)

# run_backend.py KIND MODEL REF_ONNX [JSON_OPTIONS]: KIND's output vs ONNX Runtime fp32 on the CPU, then
# time it (ms per tile over 20 pipelined batches at its largest batch). Exit 3: not for this GPU.
HELPERS="$OUT/helpers"
mkdir -p "$HELPERS"
cat >"$HELPERS/run_backend.py" <<'EOF'
import json
import sys
import time

import numpy as np

from phaseedge.backends import get_backend

from phaseedge.sidecar import SidecarError

kind, model, ref = sys.argv[1:4]
options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
try:
    backend = get_backend(kind, model, **options)
    backend.__enter__()
except SidecarError as e:
    if "UNSUPPORTED_CC" not in str(e):
        raise
    print(f"RESULT not for this GPU: {e}")  # TensorRT-RTX targets RTX-class GPUs only
    sys.exit(3)
with backend, get_backend("onnxruntime", ref, providers=["CPUExecutionProvider"]) as reference:
    if kind == "onnxruntime" and not backend.on_gpu:
        print(f"RESULT onnxruntime fell back to {backend.device} (providers {list(backend.providers)})")
        sys.exit(1)
    rng = np.random.default_rng(0)
    t, n, b = backend.tile, backend.n_classes, backend.max_batch

    def batch(k):
        return (rng.random((k, 1, t, t)).astype(np.float16),
                rng.dirichlet(np.ones(n), size=k).astype(np.float32))

    images, ratio = batch(min(2, b))
    got = backend.infer(images, ratio).astype(np.float32)
    want = reference.infer(images, ratio).astype(np.float32)
    err = float(np.abs(got - want).max())
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    work = [batch(b)] * 20
    for _ in backend.infer_many(work[:3]):
        pass
    t0 = time.perf_counter()
    for _ in backend.infer_many(work):
        pass
    ms = (time.perf_counter() - t0) * 1e3 / (20 * b)
    ok = err < 0.05 and agree > 0.95
    print(f"RESULT {backend.device} {backend.precision}: max|diff| {err:.1e} vs ORT-CPU fp32, argmax agree "
          f"{agree:.2%}; {ms:.2f} ms/tile at batch {b}{'' if ok else ' (OUT OF TOLERANCE)'}")
    sys.exit(0 if ok else 1)
EOF

# run_torch.py CKPT: the checkpoint on CUDA (fp32 eager, the baseline) vs the same on the CPU
cat >"$HELPERS/run_torch.py" <<'EOF'
import sys
import time

import torch

from phaseedge.train.checkpoint import load

model = load(sys.argv[1]).eval()
t, n = model.config["tile"], model.n_classes
torch.manual_seed(0)
images, ratio = torch.rand(2, 1, t, t), torch.softmax(torch.rand(2, n), 1)
with torch.inference_mode():
    want = torch.softmax(model(images, ratio), 1)
    gpu = model.to("cuda")
    x, r = images.cuda(), ratio.cuda()
    got = torch.softmax(gpu(x, r), 1).cpu()
    for _ in range(3):
        gpu(x, r)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        gpu(x, r)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / 20
err = float((got - want).abs().max())
print(f"RESULT {torch.cuda.get_device_name()}: max|diff| {err:.1e} vs CPU; {ms:.2f} ms/tile fp32 eager at batch 2")
sys.exit(0 if err < 1e-2 else 1)
EOF

# make_checkpoint.py ARCH TILE DIR: random weights (seeded), three classes
cat >"$HELPERS/make_checkpoint.py" <<'EOF'
import sys

import torch

from phaseedge.train.checkpoint import save
from phaseedge.train.models import build_model

arch, tile, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = build_model(arch, 3, plm=True, tile=tile)
save(model, out, class_names=["ferrite", "martensite", "bainite"])
print(f"RESULT {arch} tile {tile}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights")
EOF

# ----------------------------------------------------------------------------- per model
for m in "${MODELS[@]}"; do
    d="$OUT/$m"
    mkdir -p "$d"
    if [[ $m == sam-b && $FULL == 0 ]]; then
        for s in "${MODEL_STEPS[@]}"; do skip "$s" "$m" "FULL=0"; done
        continue
    fi

    if ((HAS_TORCH)); then run_step checkpoint "$m" "$PY" "$HELPERS/make_checkpoint.py" "${ARCH[$m]}" "${TILE[$m]}" "$d/ckpt"
    else skip checkpoint "$m" "torch not installed (pip install torch==2.13.0 or a CUDA build)"
    fi

    if [[ -z $EXPORT ]]; then
        for s in onnx fp16 trt-build rtx-build check; do skip "$s" "$m" "phaseedge-export not installed"; done
    else
        if [[ -f $d/ckpt/config.json ]]; then run_step onnx "$m" "$EXPORT" onnx "$d/ckpt" -o "$d/model.onnx"
        else skip onnx "$m" "no checkpoint"
        fi
        if [[ -f $d/model.onnx ]]; then run_step fp16 "$m" "$EXPORT" fp16 "$d/model.onnx" -o "$d/model.fp16.onnx"
        else skip fp16 "$m" "no ONNX graph"
        fi
        for target in trt rtx; do
            # one timing cache for all TensorRT builds; TensorRT-RTX ignores timing caches
            if [[ $target == trt ]]; then have=$HAS_TRT engine="$d/model.engine" extra=(--timing-cache "$OUT/timing.cache")
            else have=$HAS_RTX engine="$d/model.rtx.engine" extra=(--target rtx)
            fi
            if ((!have)); then skip "$target-build" "$m" "python module $([[ $target == trt ]] && echo tensorrt || echo tensorrt_rtx) not installed"
            elif [[ ! -f $d/model.fp16.onnx ]]; then skip "$target-build" "$m" "no fp16 graph"
            else run_step "$target-build" "$m" "$EXPORT" trt "$d/model.fp16.onnx" -o "$engine" --batch 1:4:8 "${extra[@]}"
            fi
        done
    fi

    for target in trt rtx; do
        engine="$d/model.engine"; [[ $target == rtx ]] && engine="$d/model.rtx.engine"
        if ((!HAS_CUDAPY)); then skip "$target-run" "$m" "cuda-python not installed (pip install 'phaseedge[gpu]')"
        elif [[ ! -f $engine || ! -f $d/model.onnx ]]; then skip "$target-run" "$m" "no engine"
        else run_step "$target-run" "$m" "$PY" "$HELPERS/run_backend.py" tensorrt "$engine" "$d/model.onnx"
        fi
    done

    for ep in cuda tensorrt; do
        if [[ $ep == cuda ]]; then have=$ORT_CUDA providers='["CUDAExecutionProvider", "CPUExecutionProvider"]'
        else have=$ORT_TRT providers='["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]'
        fi
        if ((!HAS_ORT)); then skip "ort-$ep" "$m" "onnxruntime not installed"
        elif ((!have)); then skip "ort-$ep" "$m" "onnxruntime has no ${ep} provider (install onnxruntime-gpu instead of onnxruntime)"
        elif [[ ! -f $d/model.fp16.onnx ]]; then skip "ort-$ep" "$m" "no fp16 graph"
        else run_step "ort-$ep" "$m" "$PY" "$HELPERS/run_backend.py" onnxruntime "$d/model.fp16.onnx" "$d/model.onnx" "{\"providers\": $providers}"
        fi
    done

    if ((!TORCH_CUDA)); then skip torch-cuda "$m" "torch has no CUDA here (CPU build or no CUDA runtime)"
    elif [[ ! -f $d/ckpt/config.json ]]; then skip torch-cuda "$m" "no checkpoint"
    else run_step torch-cuda "$m" "$PY" "$HELPERS/run_torch.py" "$d/ckpt"
    fi

    if [[ -n $EXPORT && -f $d/model.onnx ]]; then
        args=(check "$d/model.onnx")
        [[ -f $d/model.fp16.onnx ]] && args+=(--fp16 "$d/model.fp16.onnx")
        if [[ -f $d/model.engine ]]; then args+=(--engine "$d/model.engine")
        elif [[ -f $d/model.rtx.engine ]]; then args+=(--engine "$d/model.rtx.engine")
        fi
        run_step check "$m" "$EXPORT" "${args[@]}"
    elif [[ -n $EXPORT ]]; then skip check "$m" "no ONNX graph"
    fi

    if [[ -z $BENCH ]]; then skip latency "$m" "phaseedge-bench not installed"
    elif [[ ! -f $d/model.fp16.onnx ]]; then skip latency "$m" "no fp16 graph"
    else
        args=(latency --model "$d/model.fp16.onnx" --backend all --frame 2048x1536 --runs 3 --warmup 1 --out "$d/bench")
        [[ -f $d/model.engine ]] && args+=(--engine "$d/model.engine")
        [[ -f $d/ckpt/config.json ]] && args+=(--torch-model "$d/ckpt")
        run_step latency "$m" "$BENCH" "${args[@]}"
    fi
done

# ----------------------------------------------------------------------------- GPU-marked tests
run_step pytest-gpu all "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
note=$(grep -E '(passed|failed|skipped|error)' "$OUT/logs/pytest-gpu-all.log" | tail -n 1)
[[ -n $note ]] && ROWS[-1]="$(cut -d'|' -f1-4 <<<"${ROWS[-1]}")|$note"

print_table | tee "$OUT/gpu_check.md"
exit "${PIPESTATUS[0]}"

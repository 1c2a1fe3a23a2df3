#!/usr/bin/env bash
# MetalDAM results of docs/results.md, exactly as reported: pixel sizes from the scale bars,
# U-Net + PLM and its baseline (--no-plm) from train/configs/metaldam-unet.json (fixed iteration
# count, one thread, bf16 autocast: deterministic) at seeds 0 (the recipe itself) and 1, the
# two seeds of each joined into an ensemble (`phaseedge-train ensemble`), then whole-frame eval of
# the seed-0 models and the ensembles on the validation split at ratio accuracy none / 0.5 / 0.662
# / 0.9 / exact and the expert-free estimates auto / em / iter2, with and without the runtime's
# calibrate mode, plus the expert sweep with flip TTA (and d4 TTA for the PLM ensemble) and with
# multi-scale inference (the scale set chosen by scripts/scale_sweep.py on the training split),
# both ensembles with multi-scale and flip TTA, and the seed-1 models at none / 0.9 / exact,
# reporting the 3-main-phase and 4-class groups, and the random forest. Evals are one thread each:
# the PLM's and the baseline's run side by side.
# MetalDAM has no licence: it is read from ../shared and nothing derived from it but numbers
# leaves runs/ (git-ignored). The two seeds of a variant train in parallel (one core each).
#
# usage: scripts/run_metaldam.sh [RUNS_DIR]   (default runs; METALDAM=path overrides the data)
# Rerunning it keeps the fits that finished (every epoch in log.jsonl) and the ensembles, resumes
# interrupted fits, and evaluates again.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
DATA=${METALDAM:-../shared/data/metaldam}
BIN=.venv/bin
mkdir -p "$RUNS"
"$BIN/python" scripts/metaldam_pixel_sizes.py "$DATA" "$RUNS/metaldam_pixel_sizes.csv"
# a fit whose every epoch is in its log.jsonl is kept (scripts/fit_complete.py); one with a saved state is resumed
for variant in plm base; do
    flag=""; [ "$variant" = base ] && flag="--no-plm"
    for seed in 0 1; do
        out="$RUNS/md-$variant-s$seed"
        if "$BIN/python" scripts/fit_complete.py "$out"; then echo "kept: $out (all epochs logged)"; continue; fi
        resume=""; [ -d "$out/state" ] && resume="--resume"
        "$BIN/phaseedge-train" fit --config train/configs/metaldam-unet.json $flag --set seed=$seed \
            --data "$DATA" --train-split "$DATA/splits/train.txt" --val-split "$DATA/splits/val.txt" \
            --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --out "$out" --no-progress $resume \
            >> "$out.log" 2>&1 &
    done
    wait
    [ -d "$RUNS/md-$variant-ens" ] ||  # written whole or not at all, so an existing one is complete
        "$BIN/phaseedge-train" ensemble "$RUNS/md-$variant-s0/best" "$RUNS/md-$variant-s1/best" -o "$RUNS/md-$variant-ens"
done
GROUP_ARGS=(--group main3=matrix,austenite,martensite_austenite
        --group macro4=matrix,austenite,martensite_austenite,defect)
EVAL=("$BIN/phaseedge-train" eval --data "$DATA" --split "$DATA/splits/val.txt"
      --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --calibrate both "${GROUP_ARGS[@]}" --json)
to() {  # to FILE CMD…: CMD's stdout into FILE, whole or not at all (a failed or killed eval leaves no JSON)
    local out=$1; shift
    "$@" > "$out.part" || { rm -f "$out.part"; return 1; }
    mv "$out.part" "$out"
}
eval_model() {  # the α sweep with the expert-free estimates, the expert sweep with flip TTA, multi-scale
    local ckpt="$RUNS/md-$1" out="$RUNS/eval-$1"
    [ -d "$ckpt/best" ] && ckpt="$ckpt/best"
    to "$out.json" "${EVAL[@]}" "$ckpt" --ratio-accuracy none,0.5,0.662,0.9,exact,auto,em,iter2 \
        --train-prior-split "$DATA/splits/train.txt"
    to "$out-tta.json" "${EVAL[@]}" "$ckpt" --ratio-accuracy none,0.5,0.662,0.9,exact --tta
    to "$out-ms.json" "${EVAL[@]}" "$ckpt" --ratio-accuracy none,0.5,0.662,0.9,exact,auto --scales 0.8,0.9,1
}
# Every eval is one thread, so the PLM and the baseline evaluate side by side (two lanes, one core each).
plm_lane() {
    eval_model plm-s0
    to "$RUNS/eval-plm-s0-local.json" "${EVAL[@]}" "$RUNS/md-plm-s0/best" --ratio-accuracy 0.9 --ratio-mode local
    to "$RUNS/eval-plm-s1.json" "${EVAL[@]}" "$RUNS/md-plm-s1/best" --ratio-accuracy none,0.9,exact
    eval_model plm-ens
    # multi-scale with flip TTA, and d4 TTA (8 passes; 0.9 and exact): the PLM ensemble
    to "$RUNS/eval-plm-ens-ms-tta.json" "${EVAL[@]}" "$RUNS/md-plm-ens" --ratio-accuracy none,0.9,exact \
        --scales 0.8,0.9,1 --tta
    to "$RUNS/eval-plm-ens-tta-d4.json" "${EVAL[@]}" "$RUNS/md-plm-ens" --ratio-accuracy 0.9,exact --tta-mode d4
}
base_lane() {
    eval_model base-s0
    to "$RUNS/eval-base-s1.json" "${EVAL[@]}" "$RUNS/md-base-s1/best" --ratio-accuracy none,0.9,exact
    eval_model base-ens
    to "$RUNS/eval-base-ens-ms-tta.json" "${EVAL[@]}" "$RUNS/md-base-ens" --ratio-accuracy none,0.9 \
        --scales 0.8,0.9,1 --tta
    # the multi-scale set: every scale once, the candidate sets averaged, on the training split and validation
    for split in train val; do
        to "$RUNS/scale-sweep-plm-s0-$split.txt" "$BIN/python" scripts/scale_sweep.py "$RUNS/md-plm-s0/best" \
            --data "$DATA" --split "$split" --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --scales 0.7,0.8,0.9,1,1.1 \
            --combos "0.9,1;0.8,1;0.8,0.9;0.8,0.9,1;0.8,0.9,1,1.1;0.7,0.8,0.9,1" \
            --json "$RUNS/scale-sweep-plm-s0-$split.json"
    done
    "$BIN/phaseedge-bench" forest --data "$DATA" --train-split "$DATA/splits/train.txt" \
        --val-split "$DATA/splits/val.txt" --out "$RUNS/forest.json"
}
plm_lane & plm_pid=$!
base_lane & base_pid=$!
status=0
wait "$plm_pid" || status=$?
wait "$base_pid" || status=$?
[ "$status" -eq 0 ] || { echo "an evaluation failed (exit $status)" >&2; exit "$status"; }
echo "done: $RUNS/eval-{plm,base}-{s0,ens}{,-tta,-ms}.json $RUNS/eval-{plm,base}-s1.json $RUNS/eval-plm-s0-local.json $RUNS/eval-{plm,base}-ens-ms-tta.json $RUNS/eval-plm-ens-tta-d4.json $RUNS/forest.json"

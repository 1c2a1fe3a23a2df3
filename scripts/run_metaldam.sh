#!/usr/bin/env bash
# MetalDAM results of docs/results.md, exactly as reported: pixel sizes from the scale bars,
# U-Net + PLM and its baseline (--no-plm) from train/configs/metaldam-unet.json (fixed iteration
# count, seed 0, one thread, bf16 autocast: deterministic), then whole-frame eval of each on the
# validation split at ratio accuracy none / 0.5 / 0.662 / 0.9 / exact and the expert-free
# estimates auto / em / iter2, with and without the runtime's calibrate mode, with and without
# flip TTA, reporting the 3-main-phase and 4-class groups; then the random forest.
# MetalDAM has no licence: it is read from ../shared and nothing derived from it but numbers
# leaves runs/ (git-ignored). The two fits run in parallel (one core each).
#
# usage: scripts/run_metaldam.sh [RUNS_DIR]   (default runs; METALDAM=path overrides the data)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
DATA=${METALDAM:-../shared/data/metaldam}
BIN=.venv/bin
mkdir -p "$RUNS"
"$BIN/python" scripts/metaldam_pixel_sizes.py "$DATA" "$RUNS/metaldam_pixel_sizes.csv"
for variant in plm base; do
    flag=""; [ "$variant" = base ] && flag="--no-plm"
    "$BIN/phaseedge-train" fit --config train/configs/metaldam-unet.json $flag --data "$DATA" \
        --train-split "$DATA/splits/train.txt" --val-split "$DATA/splits/val.txt" \
        --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --out "$RUNS/md-$variant" --no-progress \
        > "$RUNS/md-$variant.log" 2>&1 &
done
wait
GROUP_ARGS=(--group main3=matrix,austenite,martensite_austenite
        --group macro4=matrix,austenite,martensite_austenite,defect)
for variant in plm base; do
    ACC=none,0.5,0.662,0.9,exact,auto,em,iter2
    for tta in "" --tta; do
        "$BIN/phaseedge-train" eval "$RUNS/md-$variant/best" --data "$DATA" --split "$DATA/splits/val.txt" \
            --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy "$ACC" \
            --train-prior-split "$DATA/splits/train.txt" \
            --calibrate both "${GROUP_ARGS[@]}" $tta --json > "$RUNS/md-$variant/eval${tta:+-tta}.json"
        ACC=none,0.5,0.662,0.9,exact  # TTA: the expert sweep only
    done
done
"$BIN/phaseedge-bench" forest --data "$DATA" --train-split "$DATA/splits/train.txt" \
    --val-split "$DATA/splits/val.txt" --out "$RUNS/forest.json"
echo "done: $RUNS/md-{plm,base}/eval{,-tta}.json $RUNS/forest.json"

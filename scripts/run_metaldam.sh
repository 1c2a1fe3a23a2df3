#!/usr/bin/env bash
# MetalDAM results of docs/results.md, exactly as reported: pixel sizes from the scale bars,
# U-Net + PLM and its baseline (--no-plm) from train/configs/metaldam-unet.json (fixed iteration
# count, seed 0, one thread: deterministic), then whole-frame eval of each on the validation
# split at ratio accuracy none / 0.5 / 0.662 / 0.9 / exact, with and without prior-shift
# calibration, with and without flip TTA, reporting the 3-main-phase and 4-class groups.
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
    for tta in "" --tta; do
        "$BIN/phaseedge-train" eval "$RUNS/md-$variant/best" --data "$DATA" --split "$DATA/splits/val.txt" \
            --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy none,0.5,0.662,0.9,exact \
            --calibrate both "${GROUP_ARGS[@]}" $tta --json > "$RUNS/md-$variant/eval${tta:+-tta}.json"
    done
done
echo "done: $RUNS/md-{plm,base}/eval{,-tta}.json"

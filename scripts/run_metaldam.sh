#!/usr/bin/env bash
# MetalDAM results of docs/results.md: U-Net and U-Net+PLM (same config, same seed, same time
# budget), one after the other, then whole-frame eval on the validation split at ratio accuracy
# none / 0.5 / 0.662 / 0.9 / exact, with and without prior-shift calibration.
# MetalDAM has no licence: it is read from ../shared and nothing derived from it but numbers
# leaves runs/ (git-ignored).
#
# usage: scripts/run_metaldam.sh [MINUTES_PER_MODEL] [RUNS_DIR]   (defaults: 20, runs)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-20}
RUNS=${2:-runs}
DATA=${METALDAM:-../shared/data/metaldam}
BIN=.venv/bin
for variant in unet unet-plm; do
    flag=""; [ "$variant" = unet ] && flag="--no-plm"
    "$BIN/phaseedge-train" fit --config train/configs/metaldam-unet.json $flag --data "$DATA" \
        --train-split "$DATA/splits/train.txt" --val-split "$DATA/splits/val.txt" \
        --max-minutes "$MINUTES" --out "$RUNS/metaldam-$variant" --no-progress
done
for variant in unet unet-plm; do
    "$BIN/phaseedge-train" eval "$RUNS/metaldam-$variant/best" --data "$DATA" --split "$DATA/splits/val.txt" \
        --ratio-accuracy none,0.5,0.662,0.9,exact --calibrate both --json > "$RUNS/metaldam-$variant/eval.json"
done
echo "done: $RUNS/metaldam-unet/eval.json $RUNS/metaldam-unet-plm/eval.json"

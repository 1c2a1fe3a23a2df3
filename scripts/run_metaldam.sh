#!/usr/bin/env bash
# MetalDAM results of docs/results.md, exactly as reported: pixel sizes from the scale bars,
# U-Net + PLM and its baseline (--no-plm) from train/configs/metaldam-unet.json (fixed iteration
# count, one thread, bf16 autocast: deterministic) at seeds 0 (the recipe itself) and 1, the
# two seeds of each joined into an ensemble (`phaseedge-train ensemble`), then whole-frame eval of
# the seed-0 models and the ensembles on the validation split at ratio accuracy none / 0.5 / 0.662
# / 0.9 / exact and the expert-free estimates auto / em / iter2, with and without the runtime's
# calibrate mode, plus the expert sweep with flip TTA (and d4 TTA for the PLM ensemble) and with
# multi-scale inference (the scale set chosen by scripts/scale_sweep.py on the training split),
# reporting the 3-main-phase and 4-class groups; then the random forest.
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
for model in plm-s0 base-s0 plm-ens base-ens; do
    ckpt="$RUNS/md-$model"; [ -d "$ckpt/best" ] && ckpt="$ckpt/best"
    out="$RUNS/eval-$model"
    "$BIN/phaseedge-train" eval "$ckpt" --data "$DATA" --split "$DATA/splits/val.txt" \
        --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy none,0.5,0.662,0.9,exact,auto,em,iter2 \
        --train-prior-split "$DATA/splits/train.txt" --calibrate both "${GROUP_ARGS[@]}" --json > "$out.json"
    "$BIN/phaseedge-train" eval "$ckpt" --data "$DATA" --split "$DATA/splits/val.txt" \
        --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy none,0.5,0.662,0.9,exact \
        --calibrate both "${GROUP_ARGS[@]}" --tta --json > "$out-tta.json"  # TTA: the expert sweep only
    "$BIN/phaseedge-train" eval "$ckpt" --data "$DATA" --split "$DATA/splits/val.txt" \
        --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy none,0.5,0.662,0.9,exact,auto \
        --calibrate both "${GROUP_ARGS[@]}" --scales 0.8,0.9,1 --json > "$out-ms.json"  # multi-scale
done
# the multi-scale set: every scale once, the candidate sets averaged, on the training split and validation
for split in train val; do
    "$BIN/python" scripts/scale_sweep.py "$RUNS/md-plm-s0/best" --data "$DATA" --split "$split" \
        --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --scales 0.7,0.8,0.9,1,1.1 \
        --combos "0.9,1;0.8,1;0.8,0.9;0.8,0.9,1;0.8,0.9,1,1.1;0.7,0.8,0.9,1" \
        --json "$RUNS/scale-sweep-plm-s0-$split.json" > "$RUNS/scale-sweep-plm-s0-$split.txt"
done
# multi-scale with flip TTA, the PLM ensemble
"$BIN/phaseedge-train" eval "$RUNS/md-plm-ens" --data "$DATA" --split "$DATA/splits/val.txt" \
    --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy none,0.9,exact \
    --calibrate both "${GROUP_ARGS[@]}" --scales 0.8,0.9,1 --tta --json > "$RUNS/eval-plm-ens-ms-tta.json"
# d4 TTA (8 passes), the PLM ensemble only: 0.9 and exact
"$BIN/phaseedge-train" eval "$RUNS/md-plm-ens" --data "$DATA" --split "$DATA/splits/val.txt" \
    --pixel-sizes "$RUNS/metaldam_pixel_sizes.csv" --ratio-accuracy 0.9,exact \
    --calibrate both "${GROUP_ARGS[@]}" --tta-mode d4 --json > "$RUNS/eval-plm-ens-tta-d4.json"
"$BIN/phaseedge-bench" forest --data "$DATA" --train-split "$DATA/splits/train.txt" \
    --val-split "$DATA/splits/val.txt" --out "$RUNS/forest.json"
echo "done: $RUNS/eval-{plm,base}-{s0,ens}{,-tta,-ms}.json $RUNS/eval-plm-ens-ms-tta.json $RUNS/eval-plm-ens-tta-d4.json $RUNS/forest.json"

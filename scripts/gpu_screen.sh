#!/usr/bin/env bash
# Screen recipe variants on a lent GPU (docs/results.md, "GPU screen"): each variant of
# train/configs/metaldam-unet.json at several seeds, JOBS fits at a time (one CPU thread each,
# the U-Net on the GPU), then one table of validation main-3 per variant (scripts/screen_table.py).
# On an H200 a fit took 3.7 minutes with 8 at a time, ~6.5 with 16 (one CPU thread: ~45), so one
# 10-minute device call holds about 16 fits: pass VARIANTs to split a screen over calls. GPU
# numerics differ from the CPU's bf16, so a screen only ranks variants: what it favours is
# re-run on the CPU with the recipe's own command.
# The data travel in an ignored folder (MetalDAM has no licence: never commit it):
#   mkdir -p .data && cp -r ../shared/data/metaldam .data/ && cp runs/metaldam_pixel_sizes.csv .data/
# usage (on the device machine): scripts/gpu_screen.sh OUT_DIR [VARIANT...]   (default: all below)
set -uo pipefail
set -f  # the --set values hold [ ]: no globbing
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: scripts/gpu_screen.sh OUT_DIR [VARIANT...]}; shift
DATA=${METALDAM:-.data/metaldam}
SIZES=${PIXEL_SIZES:-.data/metaldam_pixel_sizes.csv}
JOBS=${JOBS:-16}
declare -A SETS=(
    [ctl]=""
    [px46]="pixel_size_m=4.58e-08"
    [scw]="augment.scale=[0.67,1.5]"
    [pxscw]="pixel_size_m=4.58e-08 augment.scale=[0.67,1.5]"
    [d5]="model_kwargs.depth=5"
    [lr5]="lr=0.0005"
    [n06]="augment.noise=0.06"
    [ang30]="augment.max_angle=30"
    [pz10]="ratio.p_zero=0.1"
)
declare -A SEEDS=([ctl]="0 1 2 3" [px46]="0 1 2 3" [scw]="0 1 2 3")
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=(ctl px46 scw pxscw d5 lr5 n06 ang30 pz10)
mkdir -p "$OUTDIR"
for v in "${variants[@]}"; do
    [ -v "SETS[$v]" ] || { echo "unknown variant $v (known: ${!SETS[*]})" >&2; exit 2; }
    for seed in ${SEEDS[$v]:-0 1}; do
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
        args=(--set seed=$seed); for kv in ${SETS[$v]}; do args+=(--set "$kv"); done
        OMP_NUM_THREADS=1 phaseedge-train fit --config train/configs/metaldam-unet.json --data "$DATA" \
            --train-split "$DATA/splits/train.txt" --val-split "$DATA/splits/val.txt" --pixel-sizes "$SIZES" \
            --out "$OUTDIR/$v-s$seed" --no-progress "${args[@]}" > "$OUTDIR/$v-s$seed.log" 2>&1 &
    done
done
wait
python3 scripts/screen_table.py "$OUTDIR"

#!/usr/bin/env bash
# A GPU run: three generators trained side by side on one GPU, for a set time, each exported as small
# generator files to judge on a CPU afterwards.
#
#   refiner    configs/train/faces_128_refiner.yaml from weights/usgan_tfeid.safetensors: the generator trained on
#              the product's warped and textured input, paired with the real photo (fresh critic, its warm-up)
#   pair20     the same with loss.lambda_pair=20 (the paired photo weighs more than the critic)
#   warp       configs/train/faces_128_warp.yaml from the same generator: warped input without the texture
#
# It needs the 128-px training set (prepare-data's OUT/128 of TFEID + London, with landmarks.npz) on the GPU machine,
# by default in data/faces_128 of the checkout:
#   mkdir -p data && cp -r ~/.cache/usgan/data/faces/128 data/faces_128
# Run it as `bash scripts/gpu_check.sh OUT_DIR` on any machine with a CUDA GPU. It writes into OUT_DIR: machine.txt,
# train_<variant>.log (iterations per second, losses) and gen_<variant>.tar (fp16 generator files of the newest 3
# checkpoints, about 5 MB each, small enough to copy back). Then, on a CPU, per file:
#   python cli.py evaluate --weights gen_step_N.safetensors --geometry weights/geometry.safetensors \
#       --texture weights/texture.safetensors ...
# A smoke run on any machine: STEPS=4 TRAIN_ARGS=--cpu TRAIN_SECONDS=300 bash scripts/gpu_check.sh /tmp/gpu_out
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-${OUT:?give an output folder}}
DATA=${DATA:-data/faces_128}
STEPS=${STEPS:-6000}                 # the schedule's length; the learning rate decays over its second half
TRAIN_SECONDS=${TRAIN_SECONDS:-420}  # then every run is stopped (SIGTERM saves a checkpoint); leaves time to export
BATCH=${BATCH:-16}
PY=${PY:-python3}
TRAIN_ARGS=${TRAIN_ARGS:-}
RUNS=${RUNS:-runs/gpu_check}
mkdir -p "$OUT" "$RUNS"
[ -f "$DATA/landmarks.npz" ] || { echo "$DATA: no 128-px training set with landmarks.npz (see this script's head)"; exit 2; }

{ nvidia-smi -L || echo "no nvidia-smi"; $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
    > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

variant_config() {
    case $1 in
        warp) echo "configs/train/faces_128_warp.yaml" ;;
        *) echo "configs/train/faces_128_refiner.yaml" ;;
    esac
}

variant_args() {
    case $1 in
        refiner|warp) echo "--init-generator weights/usgan_tfeid.safetensors" ;;
        pair20) echo "--init-generator weights/usgan_tfeid.safetensors --set loss.lambda_pair=20" ;;
    esac
}

variant_chain() {  # what the exported file's header names: the product runs the same chain in front of it
    case $1 in
        warp) echo "--geometry geometry.safetensors" ;;
        *) echo "--geometry geometry.safetensors --texture texture.safetensors" ;;
    esac
}

VARIANTS=(refiner pair20 warp)
pids=()
for variant in "${VARIANTS[@]}"; do
    # shellcheck disable=SC2046  # the variant's options are words
    $PY cli.py train --config "$(variant_config "$variant")" --data "$DATA" --out "$RUNS/$variant" \
        --batch-size "$BATCH" --set optim.total_steps="$STEPS" --set optim.decay_start=$((STEPS / 2)) \
        --set logging.checkpoint_every=$((STEPS / 3)) --set logging.keep_checkpoints=3 --set data.workers=4 \
        $(variant_args "$variant") $TRAIN_ARGS > "$OUT/train_$variant.log" 2>&1 &
    pids+=($!)
done

deadline=$((SECONDS + TRAIN_SECONDS))
while [ $SECONDS -lt $deadline ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 5; done
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "training stopped (last exit status $status) after $SECONDS s"

for variant in "${VARIANTS[@]}"; do
    tail -n 3 "$OUT/train_$variant.log"
    exported=()
    for checkpoint in $(ls "$RUNS/$variant"/checkpoints/step_*.safetensors 2>/dev/null | tail -n 3); do
        [ -f "$checkpoint" ] || continue
        name="gen_${variant}_$(basename "$checkpoint")"
        $PY scripts/ship_weights.py "$checkpoint" "$RUNS/$name" --edit-gain 1 --dataset tfeid+london \
            --recipe "$(variant_config "$variant") ($variant, scripts/gpu_check.sh)" \
            $(variant_chain "$variant") >> "$OUT/train_$variant.log" 2>&1 && exported+=("$name")
    done
    [ ${#exported[@]} -eq 0 ] || tar -cf "$OUT/gen_$variant.tar" -C "$RUNS" "${exported[@]}"
    echo "$variant: ${#exported[@]} generator files"
done
ls -la "$OUT"

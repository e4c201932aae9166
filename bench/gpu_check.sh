#!/usr/bin/env bash
# The GPU check (issue 15): one script for a one-GPU machine, about 8 minutes on an H200, that prints what
# matters and keeps its logs and JSON under $OUT (default bench/out/gpu_check):
#   1. the card, the driver, torch and CUDA;
#   2. the `gpu`-marked tests (tests/unit/test_cuda.py: autocast training, autocast against fp32, sampling on
#      the device, fp32 on CUDA against the CPU);
#   3. bench/imagination.py on CUDA at the paper size (hidden 1024 x 6, N = 128, full and strided steps, the
#      reparam rule beside the score rule), with the denoiser's achieved TFLOP/s against a bf16 matmul measured
#      in the same run and the card's dense bf16 peak (PEAK_TFLOPS, 989 for an H100/H200 SXM);
#   4. a 5k-env-step paper-preset HalfCheetah-v5 run with 1 and then 2 imagination workers on fractional GPUs
#      (replay prefill 1000, so that most of it imagines), each run's last iteration lines and wall time.
# Steps 2 and 4 need the project installed (`make setup`, with the CUDA build of the lock's torch installed
# first); a step whose imports are missing says so and the script goes on. Every step has its own time limit.
#
#     bash bench/gpu_check.sh            # from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu_check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
started=$SECONDS
step() { echo; echo "== $1 ($((SECONDS - started)) s in)"; }
has() { "$PY" -c "import $1" 2>/dev/null; }

step "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
"$PY" -c "import torch, platform; print('python', platform.python_version(), '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA: stop"; exit 1; }

step "2. gpu-marked tests"
if has pytest; then
    timeout 120 "$PY" -m pytest -q -m gpu tests/unit/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" \
        | tail -15
else
    echo "skipped: pytest is not installed"
fi

step "3. imagination at the paper size on CUDA"
timeout 200 "$PY" bench/imagination.py --device cuda --sizes paper --batches 256 1024 --steps full strided \
    --policy-guidance score reparam --repeats 3 --budget 4 --peak-tflops "$PEAK_TFLOPS" \
    --out "$OUT/imagination_cuda.json" 2> "$OUT/imagination_cuda.progress.log" | tee "$OUT/imagination_cuda.log" \
    || tail -5 "$OUT/imagination_cuda.progress.log"  # the bench failed or ran out of time: say why

step "4. paper preset, HalfCheetah-v5, 5k env steps, 1 and 2 imagination workers"
if has ray && has gymnasium && has mujoco; then
    for workers in 1 2; do
        if [ "$workers" = 1 ]; then gpus="world_model.num_gpus=1.0"
        else gpus="world_model.num_gpus=0.34 imagination.num_workers=2 imagination.num_gpus_per_worker=0.33"; fi
        t0=$SECONDS
        timeout 170 "$PY" -m agd_ray.cli train --env HalfCheetah-v5 --guide sag --preset paper --env-steps 5000 \
            --seed 0 --output "$OUT/run_w$workers" --overwrite \
            --config replay.prefill_steps=1000 $gpus > "$OUT/run_w$workers.log" 2>&1
        rc=$?
        echo "-- $workers imagination worker(s): exit $rc after $((SECONDS - t0)) s; last lines:"
        tail -5 "$OUT/run_w$workers.log"
    done
else
    echo "skipped: needs ray, gymnasium and mujoco (make setup)"
fi

echo
echo "== done in $((SECONDS - started)) s; logs and JSON in $OUT"

#!/usr/bin/env bash
# The one-shot GPU check on one H100 or H200, most important step first.
#
#   bash benchmarks/gpu.sh                       # results and logs in benchmarks/results/gpu/
#   PYTHON=/opt/torch/.venv/bin/python3 GPU_OUT=$OUT GPU_DEADLINE_S=570 bash benchmarks/gpu.sh
#   GPU_DRY_RUN=1 GPU_OUT=/tmp/gpu-dry bash benchmarks/gpu.sh   # the same steps on CPU, tiny
#   GPU_SKIP=sampling bash benchmarks/gpu.sh     # leave out steps: tests, ced, compress, memory,
#                                                # sampling, precision, serve
#
# Needs a stock PyTorch CUDA image plus these wheels (pure Python or small):
#   pip install numpy safetensors scikit-learn scikit-image pillow tqdm rich matplotlib packaging pytest
# and the package itself. PYTHONPATH alone cannot find it: setuptools' package-dir maps export/,
# serve/ and apps/ to entpruner_sdk.export, .serve and .apps. So when those are not found, the
# script installs the checkout editable (no deps, no index) into PYTHON's environment.
# The server's GPU test and the serve step run where FastAPI and uvicorn import, and are
# skipped elsewhere (on the lent H200, carried as wheels: fastapi starlette uvicorn pydantic
# pydantic-core annotated-types typing-inspection opentelemetry-api importlib-metadata, 3 MB).
#
# Steps, in order: the GPU-marked tests; CED ranking time for a DiT-XL/2-shaped model (random
# weights, 256 samples x 8 timesteps) against N full forwards (7 of the 28 timed, scaled to 28,
# to save device time; about a minute on an H200); a short compress of the bundled
# teacher; the memory of one XL/2 compress step at batch 32, plain, with gradient
# checkpointing, with 4 micro-batches and with both; XL/2 28- vs 14-block sampling throughput, eager vs CUDA graphs (torch.compile
# "reduce-overhead"; each compile takes a minute or more, so plain compile is left to a run
# of gpu_sampling.py by hand); last, bf16 and fp16 autocast against fp32 on the bundled DiT
# teacher, sample quality and the speed ratios (mixed_precision.py); last, the server's load test
# on the GPU, 16 clients with batching off, on, and on with CUDA graphs (serve_load.py
# --compile reduce-overhead; the dry run compiles without them, as a CPU can).
#
# Built for a lent machine with a hard wall-clock limit, where a run that overruns returns
# nothing:
# - PYTHON names the interpreter outright. Never link it elsewhere: a venv's python found
#   through a symlink outside the venv loses the venv and its torch.
# - GPU_DEADLINE_S (default 570) bounds the whole script. All steps took about 11 minutes on
#   an H200, before the serve step's compiled phase (a few minutes more), and one call runs
#   10 at most: leave steps out, e.g. GPU_SKIP=ced,sampling,memory. Each step gets the smaller of its own limit and the time left, and is skipped
#   when less than 20 s is left. So no outer timeout and no pipe are needed, and no step
#   outlives the script.
# - GPU_DRY_RUN=1 runs every step on the CPU at tiny sizes (about two minutes), to check the
#   script itself before spending device time on it.
# - Each step's output goes to its own log beside the results, and the whole run writes at
#   most 9 small files to GPU_OUT: gpu.log, tests.log, compress_cost_xl.json,
#   compress_report.json, compress_report.md, train_memory.json, gpu_sampling.json,
#   mixed_precision.json, serve_load.json (each step's whole log stays in a temporary folder; its last 25
#   lines are in gpu.log).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${GPU_OUT:-benchmarks/results/gpu}"
DEADLINE=$((SECONDS + ${GPU_DEADLINE_S:-570}))
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
if [[ "${GPU_DRY_RUN:-0}" == 1 ]]; then
    DEVICE=cpu
    XL=(--arch DiT-S/2 --latent-size 8 --samples 64 --timesteps 2 --forward-passes 3 --rounds 1)
    COMPRESS_STEPS=20
    MEMORY=(--arch DiT-S/2 --latent-size 8 --batch 4 --steps 1)
    SAMPLING=(--model DiT-S/2 --latent-size 8 --batch 2 --steps 2 --repeats 1 --modes eager)
    PRECISION=(--samples 8 --steps 2 --batch 2 --repeats 1)
    SERVE=(--clients 2 --seconds 2 --max-batch 2 --steps 2 --compile default)
else
    DEVICE=cuda
    XL=(--forward-passes 7 --rounds 1)  # one round: a GPU times steadily, and its time is scarce
    COMPRESS_STEPS=500
    MEMORY=(--arch DiT-XL/2 --batch 32 --steps 2)
    SAMPLING=(--batch 32 --steps 25 --repeats 3 --modes eager,cuda-graphs)
    PRECISION=(--samples 500 --steps 50 --batch 64 --repeats 5)
    SERVE=(--clients 16 --seconds 10 --max-batch 16 --compile reduce-overhead)
fi
# PYTHONFAULTHANDLER: a crash in compiled code (a segmentation fault) prints the Python stack
export ENTPRUNER_QUIET=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 \
    PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
exec > >(tee -a "$OUT/gpu.log") 2>&1
status=0

step() {  # step KEY NAME SECONDS LOG COMMAND...: bounded by its limit and the deadline
    local key=$1 name=$2 limit=$3 log=$4; shift 4
    if [[ ",${GPU_SKIP:-}," == *",$key,"* ]]; then echo "--- $name skipped (GPU_SKIP)"; return; fi
    local left=$((DEADLINE - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "!!! $name skipped: ${left}s left before the deadline"; status=1; return
    fi
    echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    tail -n 25 "$log"
    ((rc == 0)) || { echo "!!! $name failed (exit $rc)"; status=1; }
    echo "=== $name took $((SECONDS - start)) s ==="
}

echo "python: $PYTHON"
timeout --kill-after=5 60 "$PYTHON" - <<'PY' || { echo "!!! preflight failed"; exit 1; }
import importlib.util, os, sys
print(sys.executable, sys.version.split()[0])
import torch
missing = [m for m in ("numpy", "safetensors", "sklearn", "skimage", "PIL", "tqdm", "rich",
                       "matplotlib", "packaging", "pytest")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing modules: {missing}; see the pip line at the top of benchmarks/gpu.sh")
if os.environ.get("GPU_DRY_RUN") == "1":
    print("dry run on the CPU | torch", torch.__version__)
elif not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible")
else:
    print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
# The subpackages must be found from outside the checkout (the editable finder maps them);
# found, not imported: serve and apps need fastapi and gradio, which these steps do not use.
FOUND="import importlib.util as u, sys
sys.exit(not all(u.find_spec('entpruner_sdk.' + p) for p in ('export', 'serve', 'apps')))"
if ! (cd / && "$PYTHON" -c "$FOUND" 2>/dev/null); then
    echo "installing the checkout editable (no deps) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    timeout --kill-after=5 120 "$PYTHON" -m pip install -q --no-deps --no-build-isolation \
        --no-index -e . || { echo "!!! editable install failed"; exit 1; }
    (cd / && "$PYTHON" -c "$FOUND") \
        || { echo "!!! the subpackages are still not found"; exit 1; }
fi
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# versions, the card, its bf16 and the arithmetic each step runs in, the extras: with the figures
timeout --kill-after=5 60 "$PYTHON" -m entpruner_sdk env || echo "!!! entpruner env failed"

step tests "GPU-marked tests" 300 "$OUT/tests.log" \
    "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_export.py
step ced "CED ranking, DiT-XL/2 shape, 256 x 8" 150 "$WORK/cost.log" \
    "$PYTHON" benchmarks/compress_cost.py --xl "${XL[@]}" --device "$DEVICE" \
        --out "$OUT/compress_cost_xl.json"
step compress "compress the bundled DiT teacher to 6 blocks" 150 "$WORK/compress.log" \
    "$PYTHON" -m entpruner_sdk compress --model dit-digits --budget 6 \
        --steps "$COMPRESS_STEPS" --device "$DEVICE" --report-samples 0 --quiet \
        --out "$WORK/compress-dit-digits"
for name in report.json report.md; do
    cp "$WORK/compress-dit-digits/$name" "$OUT/compress_$name" 2>/dev/null || true
done
step memory "XL/2 compress step memory, 4 settings" 120 "$WORK/memory.log" \
    "$PYTHON" benchmarks/train_memory.py "${MEMORY[@]}" --device "$DEVICE" \
        --out "$OUT/train_memory.json"
step sampling "XL/2 sampling throughput, 28 vs 14 blocks" 150 "$WORK/sampling.log" \
    "$PYTHON" benchmarks/gpu_sampling.py "${SAMPLING[@]}" --device "$DEVICE" \
        --out "$OUT/gpu_sampling.json"
step precision "bf16 and fp16 autocast vs fp32, the bundled DiT teacher" 90 "$WORK/precision.log" \
    "$PYTHON" benchmarks/mixed_precision.py --model dit-digits "${PRECISION[@]}" \
        --device "$DEVICE" --out "$OUT/mixed_precision.json"
if "$PYTHON" -c "import fastapi, uvicorn, httpx" 2>/dev/null; then
    step serve "the server's load test on the $DEVICE, batching off, on, on compiled" 240 \
        "$WORK/serve.log" \
        "$PYTHON" benchmarks/serve_load.py "${SERVE[@]}" --device "$DEVICE" \
            --out "$OUT/serve_load.json"
else
    echo "--- the server's load test skipped: FastAPI, uvicorn or httpx does not import"
fi
echo "=== done in $SECONDS s, status $status ==="
exit $status

#!/usr/bin/env bash
# The one-shot GPU check: at most 8 minutes on one H100 or H200, most important first.
#
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu/*.json and a log
#
# Needs a stock PyTorch CUDA image plus these wheels (pure Python or small):
#   pip install numpy safetensors scikit-learn scikit-image pillow tqdm rich matplotlib pytest
# and the package itself without its dependencies:
#   pip install --no-deps --no-build-isolation -e .      (or: export PYTHONPATH=$PWD)
# It runs: the GPU-marked tests, CED ranking time for a DiT-XL/2-shaped model (random weights,
# 256 samples x 8 timesteps) against N full forwards, a short compress of the bundled teacher,
# and XL/2 28- vs 14-block sampling throughput, eager vs CUDA graphs (torch.compile
# "reduce-overhead"; each mode's compile takes a minute or more, so plain compile is left to
# a run of gpu_sampling.py by hand). Every step has its own time limit and a failed step does
# not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export ENTPRUNER_QUIET=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS
    timeout "$limit" "$@" || { echo "!!! $name failed (exit $?)"; status=1; }
    echo "=== $name took $((SECONDS - start)) s ==="
}
python - <<'PY' || exit 1
import importlib, sys, torch
missing = [m for m in ("numpy", "safetensors", "sklearn", "skimage", "PIL", "tqdm", "rich",
                       "matplotlib", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing modules: {missing}; see the pip line at the top of benchmarks/gpu.sh")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible")
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
step "GPU-marked tests" 120 python -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_gpu.py tests/test_export.py
step "CED ranking, DiT-XL/2 shape, 256 x 8" 100 \
    python benchmarks/compress_cost.py --xl --device cuda --out "$OUT/compress_cost_xl.json"
step "compress the bundled DiT teacher to 6 blocks" 100 \
    python -m entpruner_sdk compress --model dit-digits --budget 6 --steps 500 \
        --device cuda --report-samples 0 --out "$OUT/compress-dit-digits" --quiet
step "XL/2 sampling throughput, 28 vs 14 blocks" 150 \
    python benchmarks/gpu_sampling.py --batch 32 --steps 25 --repeats 3 \
        --modes eager,cuda-graphs --out "$OUT/gpu_sampling.json"
exit $status

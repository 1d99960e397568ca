#!/usr/bin/env bash
# The GPU check, on a machine with one CUDA GPU:
#   1. set-up. With network (nothing installed): .venv-gpu (Python 3.11) with the CUDA build of torch 2.13.0 and
#      faiss-cuda for faiss-cpu (~2 min). Offline (--offline BUNDLE): the machine's python3 (PYTHON to name another), which must
#      already hold CUDA torch and sentence-transformers, as NVIDIA's PyTorch images do, plus BUNDLE's wheels in a
#      temporary folder on PYTHONPATH, and BUNDLE's parts (benchmarks/gpu_bundle.sh makes BUNDLE on a machine with
#      network): its model folder and SciFact copy, and its FAISS for CUDA 13
#   2. the gpu-marked tests (tests/unit/test_gpu.py): the kernel plan on CUDA, fp16/bf16 against fp32, FAISS on GPU
#   3. benchmarks/gpu_embedding.py: full SciFact, MiniLM in fp32/fp16/bf16 and the plan's choice, against
#      SentenceTransformer.encode on the same GPU, tokens/s as a fraction of the measured bf16 matmul peak
#   4. benchmarks/gpu_index.py: IVF-PQ for 1M x 384 synthetic vectors trained on the GPU and on the CPU, filled,
#      and searched (skipped, and the report says so, where faiss sees no GPU)
# Offline, steps 2-3 need the bundle's embedding part (without it, only the FAISS tests run) and step 4 its index
# part. Writes one JSON report, OUT/gpu_check.json (OUT: default benchmarks/out/gpu). Under 8 minutes on one
# H100-class GPU once the wheels are downloaded.
#   benchmarks/gpu_check.sh [--offline BUNDLE] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=""
if [ "${1:-}" = "--offline" ]; then
    BUNDLE=$(realpath "${2:?--offline needs the folder benchmarks/gpu_bundle.sh wrote}")
    shift 2
fi
OUT=$(realpath -m "${1:-benchmarks/out/gpu}")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no CUDA GPU" >&2; exit 2; }
# FAISS with GPU support: faiss-gpu-cu12's wheels stop at compute capability 8.9 (no H100/H200) and need CUDA 12's
# libraries; this build includes H100/H200 (9.0) and Blackwell (10.0), on the CUDA 13 runtime and cuBLAS that
# torch 2.13's CUDA build installs
FAISS_GPU="faiss-cuda==1.14.1.post4"
start=$(date +%s)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
embedding_args=()
test_args=(tests/unit/test_gpu.py)
if [ -n "$BUNDLE" ]; then
    PY=${PYTHON:-python3}
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$BUNDLE"/wheels/*.whl
    # the repository first: its code, not an installed copy
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
    if [ -d "$BUNDLE/all-MiniLM-L6-v2" ]; then
        # the bundle keeps the weights in fp16; widened back to fp32 here, the precision every path starts from
        cp -r "$BUNDLE/all-MiniLM-L6-v2" "$site/model"
        "$PY" benchmarks/recast_weights.py "$site/model/model.safetensors" fp32
        export EMBEDPIPE_MODEL_DIR="$site/model"  # the model for tests/unit/test_gpu.py
        embedding_args=(--model-dir "$site/model" --corpus "$BUNDLE/scifact")
    else
        test_args+=(-k "faiss or ivfpq")
    fi
else
    # a venv of its own: the CUDA builds of torch and FAISS would replace the CPU ones `make test` runs on
    PY=.venv-gpu/bin/python
    [ -x "$PY" ] || "${PYTHON:-$(command -v python3.11 || echo python3)}" -m venv .venv-gpu
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "embedpipe needs Python 3.11: name" \
        "it with PYTHON=/path/to/python3.11" >&2; exit 2; }
    "$PY" -m pip install -q "torch==2.13.0" "uv==0.13.9"
    "$PY" -m uv pip install -q --python "$PY" -e ".[dev]"
    "$PY" -m uv pip install -q --python "$PY" --no-deps -r infra/models-no-deps.txt
    "$PY" -m uv pip uninstall -q --python "$PY" faiss-cpu
    "$PY" -m uv pip install -q --python "$PY" "$FAISS_GPU"
fi
"$PY" -c 'import torch; assert torch.version.cuda and torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU"'
# the settings the CUDA build of FAISS needs (the system's libstdc++ loaded before its own, its OpenBLAS's kernels)
# shellcheck source=infra/docker/faiss-cuda-env.sh
. infra/docker/faiss-cuda-env.sh
setup=$(( $(date +%s) - start ))

set +e
"$PY" -m pytest -p no:cacheprovider -q -m gpu "${test_args[@]}" --junitxml "$OUT/gpu_tests.xml" \
    2>&1 | tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}
set -e
rm -f "$OUT/gpu_embedding.json" "$OUT/gpu_index.json"
if [ -z "$BUNDLE" ] || [ -d "$BUNDLE/all-MiniLM-L6-v2" ]; then
    "$PY" benchmarks/gpu_embedding.py --out "$OUT" "${embedding_args[@]}"
else
    echo "embedding skipped: the bundle holds no model (gpu_bundle.sh --only index)" >&2
fi
if "$PY" -c 'import faiss; assert faiss.get_num_gpus() > 0' 2>/dev/null; then
    "$PY" benchmarks/gpu_index.py --out "$OUT"
else
    echo "IVF-PQ on the GPU skipped: faiss sees no GPU" >&2
fi
"$PY" - "$OUT" "$setup" "$tests" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path
out, setup, tests, total = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def part(name: str, skipped: str) -> dict:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"skipped": skipped}
report = {"setup_s": setup, "total_s": total, "gpu_tests_exit_code": tests,
          "gpu_tests_log_tail": (out / "gpu_tests.log").read_text()[-2000:],
          "embedding": part("gpu_embedding", "the offline bundle holds no model"),
          "gpu_index": part("gpu_index", "faiss sees no GPU")}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"gpu_check: {out / 'gpu_check.json'} (set-up {setup} s, total {total} s, gpu tests exit {tests})")
PY
exit "$tests"

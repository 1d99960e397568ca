#!/usr/bin/env bash
# The GPU check, on a machine with one CUDA GPU and nothing installed (network to PyPI needed for the set-up):
#   1. .venv with the CUDA build of torch 2.13.0 (PyPI's default Linux wheel) and faiss-gpu for faiss-cpu (~2 min)
#   2. the gpu-marked tests (tests/unit/test_gpu.py): the kernel plan on CUDA, fp16/bf16 against fp32, FAISS on GPU
#   3. benchmarks/gpu_embedding.py: full SciFact, MiniLM in fp32/fp16/bf16 and the plan's choice, against
#      SentenceTransformer.encode on the same GPU, tokens/s as a fraction of the measured bf16 matmul peak
#   4. benchmarks/index_build.py: IVF-PQ for 1M x 384 synthetic vectors, trained on the GPU
# and writes one JSON report, OUT/gpu_check.json (OUT: the first argument, default benchmarks/out/gpu). Under
# 8 minutes on one H100-class GPU once the wheels are downloaded.
#   benchmarks/gpu_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-benchmarks/out/gpu}")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no CUDA GPU" >&2; exit 2; }
start=$(date +%s)
[ -x .venv/bin/python ] || python3 -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
.venv/bin/python -m pip install -q "torch==2.13.0" "uv==0.13.9"
.venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]"
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps -r infra/models-no-deps.txt
.venv/bin/python -m uv pip uninstall -q --python .venv/bin/python faiss-cpu
.venv/bin/python -m uv pip install -q --python .venv/bin/python "faiss-gpu-cu12==1.15.1"
.venv/bin/python -c 'import torch, faiss; assert torch.cuda.is_available() and faiss.get_num_gpus() > 0, "no GPU seen"'
setup=$(( $(date +%s) - start ))

set +e
.venv/bin/python -m pytest -p no:cacheprovider -q -m gpu tests/unit/test_gpu.py --junitxml "$OUT/gpu_tests.xml" \
    2>&1 | tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}
set -e
.venv/bin/python benchmarks/gpu_embedding.py --out "$OUT"
.venv/bin/python benchmarks/index_build.py --n 1000000 --shards 8 --subset 200000 --out "$OUT"
.venv/bin/python - "$OUT" "$setup" "$tests" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path
out, setup, tests, total = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
report = {"setup_s": setup, "total_s": total, "gpu_tests_exit_code": tests,
          "gpu_tests_log_tail": (out / "gpu_tests.log").read_text()[-2000:],
          "embedding": json.loads((out / "gpu_embedding.json").read_text()),
          "index_build": json.loads((out / "index_build.json").read_text())}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"gpu_check: {out / 'gpu_check.json'} (set-up {setup} s, total {total} s, gpu tests exit {tests})")
PY
exit "$tests"

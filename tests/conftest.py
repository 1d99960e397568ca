from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "scifact-sample"
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"


def write_jsonl(path: Path, lines: list[str | bytes | dict]) -> Path:
    """Write raw lines (bytes/str kept as-is, dicts as JSON); .gz paths are gzipped."""
    data = b"".join((x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n"
                    for x in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="session")
def sample_docs() -> list[dict]:
    return [json.loads(line) for line in gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8")]


@pytest.fixture(scope="session")
def encoder():
    from pipeline.config import ModelConfig
    from pipeline.encoder import cached_encoder

    return cached_encoder(ModelConfig())


@pytest.fixture(scope="session")
def tokenizer(encoder):
    return encoder.tokenizer

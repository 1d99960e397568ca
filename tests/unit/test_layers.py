"""The layering rule: pipeline/ (every sub-package) imports neither ray nor prefect, operators/ imports no prefect,
and within pipeline/ no module imports one of a higher layer, so the package has no import circle."""

import ast
import subprocess
import sys

from tests.conftest import REPO

# pipeline's layers, lowest first: a module may import its own layer and those below it
PIPELINE_LAYERS = [("errors", "redaction", "config_base", "config", "config_loader", "startup"), ("storage",),
                   ("corpus", "models"), ("index",), ("snapshots",), ("quality",), ("serving",), ("jobs",),
                   ("reports",)]


def _imports(path) -> list[str]:
    """Every module an import statement in `path` names (function-level imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _layer(module: str) -> int:
    part = module.split(".")[1]
    return next(i for i, names in enumerate(PIPELINE_LAYERS) if part in names)


def test_engines_stay_out_of_the_core_and_prefect_out_of_operators():
    offenders = []
    for package, banned in (("pipeline", {"ray", "prefect", "prefect_ray"}), ("operators", {"prefect"})):
        for path in (REPO / package).rglob("*.py"):
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in _imports(path) if n.split(".")[0] in banned]
    assert offenders == []


def test_pipeline_imports_only_its_own_layer_or_lower():
    upward = []
    for path in (REPO / "pipeline").rglob("*.py"):
        if path.name == "__init__.py" and path.parent.name == "pipeline":
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name in _imports(path):
            if name.startswith("pipeline.") and _layer(name) > _layer(module):
                upward.append(f"{module} -> {name}")
    assert upward == []


def test_importing_every_pipeline_module_loads_no_engine():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "pipeline").rglob("*.py"))
    assert len(modules) >= 40 and "pipeline.storage.layout" in modules  # the walk found the sub-packages
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'prefect'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_loads_no_engine_or_data_library_until_a_command_needs_one():
    """`embedpipe --help` (and typer's parsing of any command line) imports only the CLI's modules: 0.3-0.4 s on a
    Zen 4, against 1.65 s when the build summary's modules came with it (polars, faiss, bm25s)."""
    heavy = {"ray", "prefect", "torch", "polars", "pyarrow", "faiss", "bm25s", "transformers"}
    code = f"import sys, flows.cli\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

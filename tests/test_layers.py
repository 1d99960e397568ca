"""pipeline/ is the engine-free core: it must import neither ray nor prefect, directly or indirectly."""

import ast
import subprocess
import sys

from tests.conftest import REPO


def test_pipeline_source_has_no_engine_imports():
    offenders = []
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"ray", "prefect", "prefect_ray"}]
    assert offenders == []


def test_importing_every_pipeline_module_loads_no_engine():
    modules = sorted(p.stem for p in (REPO / "pipeline").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import pipeline.{m}\n" for m in modules) +
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'prefect'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert len(modules) >= 10 and out.stdout.strip() == "[]"

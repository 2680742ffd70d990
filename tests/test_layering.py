"""The packages' layering, read from the source: each layer imports only layers below it.

    inference -> reports -> engine -> workers -> api -> cxr

(``reports`` may import ``inference``, ``engine`` both, and so on; never the other way.)
``demo`` (the demo model's tooling) sits beside them: it may import ``inference`` and
``reports``, and only ``cxr`` imports it. ``celeryconfig`` imports nothing of the
project. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["inference", "reports", "engine", "workers", "api", "cxr"]
PROJECT = {*LAYERS, "demo", "celeryconfig", "bench", "tests"}
#: What each package may import besides itself.
ALLOWED: dict[str, set[str]] = {
    **{pkg: set(LAYERS[:i]) for i, pkg in enumerate(LAYERS)},
    "demo": {"inference", "reports"},
    "celeryconfig": set(),
}
ALLOWED["cxr"] |= {"demo"}
ALLOWED["workers"] |= {"celeryconfig"}


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every import in ``path``."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PROJECT}
    return found


def sources(package: str) -> list[Path]:
    if package == "celeryconfig":
        return [ROOT / "celeryconfig.py"]
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sources(package)
        for name, line in sorted(project_imports(path))
        if name not in allowed
    ]
    assert sources(package) and not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from api.auth import issue_token\n", encoding="utf-8")
    assert project_imports(bad) == {("api", 2)}


def test_no_two_modules_share_a_name() -> None:
    names = Counter(path.stem for pkg in [*LAYERS, "demo"] for path in sources(pkg) if path.stem != "__init__")
    assert [name for name, n in names.items() if n > 1] == []


def _frameworks_after_import(modules: str) -> list[str]:
    code = (
        f"import sys, {modules}; "
        "print(sorted(m for m in ('tensorflow', 'flask', 'celery', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return eval(out.stdout.strip().splitlines()[-1])  # a list literal printed by the child


def test_reports_does_not_import_frameworks() -> None:
    """reports/ stays a plain library: no web, queue or model framework behind it."""
    assert (
        _frameworks_after_import("reports.naming, reports.images, reports.predictions, reports.pdf, reports.publish")
        == []
    )


def test_engine_state_and_policy_do_not_import_frameworks() -> None:
    """The job store, summary, discovery, delivery and settings need neither Celery nor Flask."""
    assert (
        _frameworks_after_import(
            "engine.jobstore, engine.summary, engine.discovery, engine.delivery, engine.settings, engine.logs"
        )
        == []
    )


def test_importing_the_worker_app_module_builds_nothing() -> None:
    """``workers.app`` makes its app on first access only, and connects no signal before."""
    code = (
        "import workers.app as m; from celery import signals; "
        "before = (len(signals.after_setup_logger.receivers), 'app' in vars(m), bool(m._worker_app)); "
        "app = m.app; "
        "after = (len(signals.after_setup_logger.receivers), app is m.app); print(before, after)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "(0, False, False) (1, True)"


def test_celeryconfig_backend_matches_workers_backend() -> None:
    """``celeryconfig`` spells the result backend as a string; it must be what
    ``workers.backend.backend_url`` builds."""
    import celeryconfig
    from workers.backend import backend_url

    assert celeryconfig.result_backend == backend_url(celeryconfig.REDIS_URL)


def test_dicom_node_imports_no_model_or_web_framework() -> None:
    """``workers.dicom_node`` sits in ``workers`` beside ``workers.canvas`` (it sends jobs the
    way the API does) but runs as its own process: neither TensorFlow nor Flask behind it."""
    assert _frameworks_after_import("workers.dicom_node") == []

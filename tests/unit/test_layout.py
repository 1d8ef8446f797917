"""The code's layers hold: no module imports from a layer above its own, no import cycle.

``scripts/import_graph.py`` reads the import statements of ``src/cryophile`` and
reports, beside the graph, every upward edge and every cycle; these tests fail
when it reports any, naming them (DESIGN.md §7's rule, kept by the suite rather
than by review).
"""

from __future__ import annotations

import subprocess
import sys

from support.files import REPO


def _section(report: str, title: str) -> list[str]:
    """The lines under ``# title`` up to the next heading."""
    lines = report.splitlines()
    start = lines.index(f"# {title}") + 1
    body: list[str] = []
    for line in lines[start:]:
        if line.startswith("# "):
            break
        body.append(line)
    return body


def _report(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_graph.py"), *args, str(REPO / "src")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return done.stdout


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert _section(_report(), "upward edges (into a layer above)") == ["none"]


def test_no_import_cycle_between_units_or_modules() -> None:
    report = _report("--modules")
    assert _section(report, "cycles between units") == ["none"]
    assert _section(report, "cycles between modules") == ["none"]

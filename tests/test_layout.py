"""The layout is the architecture (DESIGN.md §2): imports flow one way and modules stay small.

Read from the source with ``ast``, so a forbidden import fails here even on a code path no other test
runs (a lazy import inside a function included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dapi"

# What the simulated network may use of the rest: wire-level code and the plumbing kit.
SIMULATOR_MAY_IMPORT = (
    "dapi.gen",
    "dapi.chain.epochs",
    "dapi.chain.keys",
    "dapi.chain.ripemd160",
    "dapi.chain.tx",
    "dapi.chain.messages",
    "dapi.chain.gojson",
    "dapi.chain.store",
    "dapi.inference.signatures",
    "dapi.inference.sampling",
    "dapi.inference.comparison",
    "dapi.inference.request_body",
    "dapi.inference.checks",
    "dapi.inference.responses",
    "dapi.inference.stats",
    "dapi.inference.executor",
    "dapi.mlnodeclient.models",
    "dapi.runtime",
    "dapi.logs",
    "dapi.devnet",
)

# For each layer, what it must never import (the layers above it).
NEVER_IMPORTS = {
    "dapi.runtime": ("dapi.chain", "dapi.broker", "dapi.server", "dapi.event_listener", "dapi.daemon",
                     "dapi.devnet", "dapi.testbed", "dapi.mlnodeclient", "dapi.poc", "dapi.config"),
    "dapi.chain": ("dapi.broker", "dapi.server", "dapi.event_listener", "dapi.daemon", "dapi.devnet",
                   "dapi.testbed", "dapi.poc", "dapi.mlnodeclient"),
    "dapi.mlnodeclient": ("dapi.broker", "dapi.server", "dapi.event_listener", "dapi.daemon", "dapi.devnet",
                          "dapi.testbed", "dapi.chain", "dapi.poc"),
    "dapi.broker": ("dapi.server", "dapi.event_listener", "dapi.daemon", "dapi.devnet", "dapi.testbed"),
    "dapi.server": ("dapi.event_listener", "dapi.daemon", "dapi.devnet", "dapi.testbed"),
    "dapi.event_listener": ("dapi.server", "dapi.daemon", "dapi.devnet", "dapi.testbed"),
    "dapi.inference": ("dapi.server", "dapi.event_listener", "dapi.daemon", "dapi.devnet", "dapi.testbed"),
    "dapi.daemon": ("dapi.devnet", "dapi.testbed"),
}

MAX_LINES = 600
EXPLAIN_ABOVE = 400


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[1:2] == ["gen"]:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "dapi" or name.startswith("dapi.")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = _modules()


def test_the_module_list_is_not_empty() -> None:
    names = {name for name, _ in MODULES}
    assert {"dapi.daemon", "dapi.devnet", "dapi.testbed", "dapi.runtime.backoff"} <= names


@pytest.mark.parametrize(("name", "path"), [m for m in MODULES if _within(m[0], "dapi.devnet")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_the_simulator_imports_only_wire_level_code(name: str, path: Path) -> None:
    outside = sorted(i for i in _imports(path) if not any(_within(i, ok) for ok in SIMULATOR_MAY_IMPORT))
    assert outside == [], f"{name} imports {outside}"


@pytest.mark.parametrize(("name", "path"), MODULES, ids=lambda v: v if isinstance(v, str) else "")
def test_imports_flow_downwards(name: str, path: Path) -> None:
    for layer, forbidden in NEVER_IMPORTS.items():
        if _within(name, layer):
            bad = sorted(i for i in _imports(path) if any(_within(i, f) for f in forbidden))
            assert bad == [], f"{name} (in {layer}) imports {bad}"


@pytest.mark.parametrize(("name", "path"), MODULES, ids=lambda v: v if isinstance(v, str) else "")
def test_modules_are_small_or_say_why_not(name: str, path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"
    if lines > EXPLAIN_ABOVE:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "one piece" in doc, f"{name} has {lines} lines and its docstring does not say why it is one piece"


def test_the_import_rule_would_catch_a_daemon_import(tmp_path: Path) -> None:
    # The checker itself: a simulator module importing the daemon is reported.
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from dapi.daemon import Daemon\n    return Daemon\n")
    assert _imports(module) == {"dapi.daemon"}
    assert not any(_within("dapi.daemon", ok) for ok in SIMULATOR_MAY_IMPORT)

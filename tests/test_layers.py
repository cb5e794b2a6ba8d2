"""The import layering of docs/architecture.md, checked on the source.

Data flows one way (SIP/RTP -> conference engine -> streams -> callbacks; REST -> services ->
store/engine), and the imports follow it: a package never imports one above it, and no two
packages import each other (directly or through others). A failure names the import that
breaks the rule, with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import confstream

ROOT = Path(confstream.__file__).parent

#: Lower number = lower layer. A module may import its own layer or any lower one.
#: (top-level modules and packages of ``confstream``; see docs/architecture.md)
LAYERS: dict[str, int] = {
    "errors": 0,
    "settings": 0,
    "metrics": 0,
    "gcpolicy": 0,
    "logsetup": 0,
    "dbfiles": 0,
    "media": 1,
    "netpolicy": 1,
    "voice": 1,
    "conference": 2,
    "rtp": 3,
    "sip": 4,
    "callbacks": 3,
    "store": 2,
    "streams": 4,
    # cluster membership/ownership in Redis: infrastructure below services (docs/cluster.md)
    "cluster": 4,
    "services": 5,
    "calls": 5,
    # calls placed through the REST API: above the services it drives (docs/sip.md)
    "dialout": 5,
    "api": 6,
    "app": 7,
    "cli": 8,
    # test/bench/demo helpers: never imported by the server itself
    "tools": 9,
}


def _unit(module: str) -> str | None:
    """``confstream.sip.server`` -> ``sip``; None for modules outside the project."""
    parts = module.split(".")
    if parts[0] != "confstream" or len(parts) < 2:
        return None
    return parts[1]


def _imports() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, "file:line") for every project import."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if "migrations" in rel.parts:
            continue
        unit = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            modules: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.module and node.level == 0:
                    modules = [node.module]
                    if node.module == "confstream":
                        modules = [f"confstream.{a.name}" for a in node.names]
            else:
                modules = [a.name for a in node.names]
            for module in modules:
                target = _unit(module)
                if target is not None and target != unit:
                    found.append((unit, target, f"{rel}:{node.lineno}"))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir() if not p.name.startswith("_")}
    units -= {"py.typed"}
    assert units - set(LAYERS) == set()


def test_no_import_runs_upwards() -> None:
    upward = [
        f"{where}: {unit} imports {target}"
        for unit, target, where in _imports()
        if LAYERS[target] > LAYERS[unit]
    ]
    assert upward == []


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for unit, target, _ in _imports():
        graph.setdefault(unit, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        todo = [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    cycles = sorted(
        f"{unit} <-> {target}"
        for unit, targets in graph.items()
        for target in targets
        if reaches(target, unit)
    )
    assert cycles == []


def test_the_server_never_imports_the_test_tools() -> None:
    assert [w for u, t, w in _imports() if t == "tools" and u != "tools"] == []

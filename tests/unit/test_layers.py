"""Import layering, checked with `ast`: imports point down, and the sans-IO core does no IO.

The layer map is data: a new module must be placed in it, or this test says so.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import meshd

PACKAGE_DIR = Path(meshd.__file__).resolve().parent

# Lowest first (STYLE.md, "Layout"). A module may import meshd modules of its own layer or
# lower. Keys match a module or, with a dot, everything inside a package.
LAYERS: dict[str, int] = {
    "meshd.errors": 0,
    "meshd.config": 0,        # types used everywhere
    "meshd.metrics": 0,       # counters and gauges, plain data
    "meshd.wire": 1,
    "meshd.identity": 2,
    "meshd.records": 3,
    "meshd.table": 4,
    "meshd.gossip": 5,
    "meshd.services": 5,
    "meshd.dns": 5,           # the package itself
    "meshd.dns.zone": 5,
    "meshd.keyfiles": 6,      # the IO edge for key material
    "meshd.reconcile": 6,
    "meshd.dns.server": 6,
    "meshd.state": 6,         # the state directory (last version, tags)
    "meshd.events": 7,        # public events and their bounded subscriptions
    "meshd.serve": 7,         # bounded stream servers, one HTTP exchange (h11)
    "meshd.pump": 7,          # the gossip thread: datagrams and timers off the loop
    "meshd.agent": 7,
    "meshd.control": 7,       # the agent's TaskGroup owns the control server
    "meshd.sim": 7,           # beside the agent; see SIM_MAY_IMPORT
    "meshd.node": 8,
    "meshd.client": 8,        # the control socket's client, for the CLI
    "meshd.cli": 9,
    "meshd.demo": 9,          # drives `meshd` commands, beside the CLI
    "meshd.entry": 10,        # the console script's door
    "meshd.__main__": 10,
    "meshd": 9,               # the public surface re-exports from every layer
}
SANS_IO_LAYER = 5             # the simulator may import these layers, and itself
SANS_IO_FILES = ["errors.py", "wire.py", "identity.py", "records.py", "table.py",
                 "gossip/**/*.py", "sim/**/*.py"]
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "time", "subprocess", "pyroute2", "threading",
                        "selectors", "secrets"}
ALLOWED_FROM_RANDOM = {"Random"}  # the type of an injected rng; never the global functions
HEAVY_OPTIONAL = ("pyroute2", "dns", "aiodns")


def module_name(path: Path) -> str:
    parts = list(path.resolve().relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


ALL_FILES = sorted(PACKAGE_DIR.rglob("*.py"))
MODULES = {module_name(p): p for p in ALL_FILES}


def layer_of(module: str) -> int | None:
    """The layer of the longest key that names `module` or a package containing it."""
    best = None
    for key in LAYERS:
        if (module == key or (key != "meshd" and module.startswith(key + "."))) and (
                best is None or len(key) > len(best)):
            best = key
    return None if best is None else LAYERS[best]


def is_sim(module: str) -> bool:
    return module == "meshd.sim" or module.startswith("meshd.sim.")


def imported_modules(tree: ast.AST, module: str, is_package: bool,
                     known: set[str]) -> list[tuple[str, int]]:
    """(module, line) for every import anywhere in the file, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return found


def random_misuse(tree: ast.AST) -> list[str]:
    """Uses of the process-global random generator (module functions, not the `Random` type)."""
    aliases = set()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "random"}
        elif isinstance(node, ast.ImportFrom) and node.module == "random":
            problems += [f"line {node.lineno}: from random import {a.name}"
                         for a in node.names if a.name not in ALLOWED_FROM_RANDOM]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr not in ALLOWED_FROM_RANDOM):
            problems.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "os" and node.attr in ("urandom", "getrandom")):
            problems.append(f"line {node.lineno}: os.{node.attr}")
    return problems


def sans_io_problems(source: str) -> list[str]:
    tree = ast.parse(source)
    problems = random_misuse(tree)
    for target, line in imported_modules(tree, "meshd.x", False, set()):
        if target.split(".")[0] in FORBIDDEN_IN_SANS_IO:
            problems.append(f"line {line}: imports {target}")
    return problems


def layering_problems(module: str, source: str, known: set[str], is_package: bool) -> list[str]:
    own = layer_of(module)
    if own is None:
        return [f"{module} is not in the layer map (tests/unit/test_layers.py LAYERS)"]
    problems = []
    for target, line in imported_modules(ast.parse(source), module, is_package, known):
        if target != "meshd" and not target.startswith("meshd."):
            continue
        theirs = layer_of(target)
        if theirs is None:
            problems.append(f"{module}:{line} imports {target}, which is not in the layer map")
        elif is_sim(target) and not is_sim(module):
            problems.append(f"{module}:{line} imports the simulator {target}")
        elif is_sim(module) and not is_sim(target) and theirs > SANS_IO_LAYER:
            problems.append(f"{module}:{line}: the simulator imports {target} (not sans-IO)")
        elif not is_sim(module) and theirs > own:
            problems.append(f"{module}:{line} (layer {own}) imports {target} (layer {theirs})")
    return problems


def sans_io_files() -> list[Path]:
    files = {p for pattern in SANS_IO_FILES for p in PACKAGE_DIR.glob(pattern)}
    return sorted(files)


# --- the checks on meshd itself -----------------------------------------------------------


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_sans_io_modules_do_no_io(path: Path) -> None:
    assert sans_io_problems(path.read_text()) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    path = MODULES[module]
    assert layering_problems(module, path.read_text(), set(MODULES),
                             path.name == "__init__.py") == []


def test_core_modules_are_all_checked() -> None:
    checked = {module_name(p) for p in sans_io_files()}
    assert {"meshd.errors", "meshd.wire", "meshd.identity", "meshd.records",
            "meshd.table"} <= checked


def test_sans_io_import_pulls_in_no_kernel_or_dns_library() -> None:
    """Membership-only mode must not pay for pyroute2 or dnspython (DESIGN, "Cost")."""
    modules = [module_name(p) for p in sans_io_files()]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print([m for m in {HEAVY_OPTIONAL!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the checker itself ------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "import asyncio",
    "import time as clock",
    "from socket import socket",
    "def f():\n    import subprocess",
    "from pyroute2 import IPRoute",
    "import threading",
    "import random\nx = random.random()",
    "import random\nrandom.choice([1])",
    "import random as r\nr.seed(1)",
    "from random import shuffle",
    "import random\nf = random.randint",
    "import os\nos.urandom(16)",
])
def test_checker_catches_io_in_the_core(source: str) -> None:
    assert sans_io_problems(source)


@pytest.mark.parametrize("source", [
    "import random\ndef f(rng: random.Random) -> float:\n    return rng.random()",
    "from random import Random\nrng = Random(1)",
    "import hashlib, ipaddress\nfrom dataclasses import dataclass",
])
def test_checker_allows_injected_randomness(source: str) -> None:
    assert sans_io_problems(source) == []


KNOWN = {"meshd", "meshd.errors", "meshd.wire", "meshd.table", "meshd.agent", "meshd.sim",
         "meshd.sim.net", "meshd.gossip", "meshd.gossip.engine", "meshd.gossip.sync"}


@pytest.mark.parametrize("module,source", [
    ("meshd.wire", "from meshd import table"),
    ("meshd.table", "from meshd.gossip.engine import Gossip"),
    ("meshd.gossip.engine", "from meshd.agent import Agent"),
    ("meshd.gossip.engine", "from ...meshd import agent"),
    ("meshd.gossip.sync", "from .. import agent"),
    ("meshd.sim.net", "from meshd import agent"),
    ("meshd.agent", "import meshd.sim.net"),
    ("meshd.newthing", "import meshd.errors"),
    ("meshd.table", "import meshd.unknown"),
])
def test_checker_catches_upward_imports(module: str, source: str) -> None:
    assert layering_problems(module, source, KNOWN | {"meshd.newthing"}, False)


@pytest.mark.parametrize("module,source", [
    ("meshd.table", "from meshd import wire\nfrom meshd.errors import WireError"),
    ("meshd.gossip.engine", "from meshd.gossip.sync import SyncSession\nfrom . import sync"),
    ("meshd.sim.net", "from meshd.gossip.engine import Gossip\nfrom meshd.sim import net"),
    ("meshd.agent", "from meshd.gossip import engine\nfrom meshd import table"),
    ("meshd.cli", "from meshd import __version__"),
])
def test_checker_allows_downward_imports(module: str, source: str) -> None:
    assert layering_problems(module, source, KNOWN | {"meshd.cli"}, False) == []

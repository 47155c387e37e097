"""The import arrows between the package's layers run one way.

From the bottom: pure parts (the whole ``config`` package, quota
arithmetic, ZooKeeper records and paths, table formatting) -> the ZooKeeper
layer (``zk``) -> the request protocol (``requests``) -> the drivers
(``driver``) -> the launcher -> the commands (``cmd``).  A module may import
its own layer and those below.  ``fakecloud`` stands apart: it imports
nothing of the launcher, and nothing of the launcher imports it.  As the
guide says, a driver never imports the ZooKeeper layer (records are pure
data).  And the configuration imports nothing of ``driver`` or ``zk``, not
even their pure modules: drivers read config types, and whoever loads
nodepool.yaml passes the driver registry to the loader.

Inside ``zk`` and ``driver`` some arrows are ruled out too (the contracts
in ``INSIDE_PACKAGES``): the ZooKeeper recipes stand on nothing above
them, the node store and the shared quota book know nothing of each
other, operator actions are built on the store and not the other way
round; the generic driver modules name no cloud, each cloud's driver
stands apart from the others, OpenStack's configuration imports nothing
of its machinery, its provider only wires its parts (none imports it) and
what its machines are handed knows no machine.  No module of ``driver``
or ``launcher`` imports, through any number of others, a module that
imports it (not even in a ``TYPE_CHECKING`` block).

Every import counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "nodepool"

# Lowest first; a module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("pure", ("nodepool.version", "nodepool.tables", "nodepool.config", "nodepool.quota",
              "nodepool.zk.records", "nodepool.zk.paths", "nodepool.zk.ids",
              "nodepool.zk.image_records", "nodepool.driver.outcomes",
              # OpenStack's config model: plain dataclasses.
              "nodepool.driver.openstack.model",
              # The translation for zuul-launcher reads only the config models.
              "nodepool.migrate")),
    ("zk", ("nodepool.zk",)),
    ("requests", ("nodepool.requests",)),
    ("driver", ("nodepool.driver",)),
    ("launcher", ("nodepool.launcher",)),
    ("cmd", ("nodepool.cmd",)),
]
APART = ("nodepool.fakecloud",)
# What a driver may use of the ZooKeeper package: plain records.
DRIVER_MAY_USE_OF_ZK = ("nodepool.zk.records", "nodepool.zk.paths", "nodepool.zk.ids",
                        "nodepool.zk.image_records")
# What the configuration may use of those packages: nothing.
CONFIG_NEVER_USES = ("nodepool.driver", "nodepool.zk")


@dataclasses.dataclass(frozen=True)
class Contract:
    """``sources`` (but ``except_sources``) never import ``targets`` (but
    ``except_targets``); every name is a module or package prefix."""

    why: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    except_sources: tuple[str, ...] = ()
    except_targets: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (*self.sources, *self.targets, *self.except_sources, *self.except_targets)


NODE_STORE = ("nodepool.zk.store", "nodepool.zk.cache", "nodepool.zk.node_index",
              "nodepool.zk.node_admin")
SHARED_BOOK = ("nodepool.zk.shared_quota", "nodepool.zk.project_book", "nodepool.zk.membership",
               "nodepool.zk.provider_share")
CLOUDS = ("nodepool.driver.openstack", "nodepool.driver.static")
OPENSTACK_MACHINES = ("nodepool.driver.openstack.create_machine",
                      "nodepool.driver.openstack.deletion")
OPENSTACK_MACHINE_PARTS = tuple(f"nodepool.driver.openstack.{m}" for m in (
    "context", "cloud_calls", "quota_broker", "launch_reporter", "label_plan",
    "floating_ips", "list_pacing"))
# Packages whose modules import each other in one direction only.
NO_CIRCLES = ("nodepool.driver", "nodepool.launcher")
INSIDE_PACKAGES: list[Contract] = [
    Contract("a ZooKeeper recipe stands on plain records and the session only",
             ("nodepool.zk.session", "nodepool.zk.locks", "nodepool.zk.membership"),
             ("nodepool.zk",),
             except_targets=("nodepool.zk.session", "nodepool.zk.paths", "nodepool.zk.ids",
                             "nodepool.zk.records")),
    Contract("the shared quota book keeps no node or request records",
             SHARED_BOOK, NODE_STORE),
    Contract("the node and request store knows nothing of the shared quota book",
             NODE_STORE, SHARED_BOOK),
    Contract("operator actions are built on the store, never the store on them",
             ("nodepool.zk",), ("nodepool.zk.node_admin", "nodepool.zk.image_admin"),
             except_sources=("nodepool.zk.node_admin", "nodepool.zk.image_admin")),
    Contract("the generic driver modules name no cloud",
             ("nodepool.driver",), CLOUDS, except_sources=CLOUDS),
    Contract("each cloud's driver stands apart from the others",
             ("nodepool.driver.openstack",), ("nodepool.driver.static",)),
    Contract("each cloud's driver stands apart from the others",
             ("nodepool.driver.static",), ("nodepool.driver.openstack",)),
    Contract("OpenStack's configuration model and schema import nothing of its machinery",
             ("nodepool.driver.openstack.model", "nodepool.driver.openstack.schema"),
             ("nodepool.driver",)),
    Contract("OpenStack's provider wires its parts together; no part imports it",
             ("nodepool.driver.openstack",), ("nodepool.driver.openstack.provider",),
             except_sources=("nodepool.driver.openstack.provider",)),
    Contract("what OpenStack's machines are handed knows no machine",
             OPENSTACK_MACHINE_PARTS, OPENSTACK_MACHINES),
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imports_of(path: pathlib.Path) -> set[str]:
    """The nodepool modules ``path`` imports (``from pkg import mod`` is
    an import of ``pkg.mod``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names]
            modules = [s for s in subs if _is_module(s)]
            found |= set(modules) if len(modules) == len(subs) else {target, *modules}
    return {m for m in found if m == "nodepool" or m.startswith("nodepool.")}


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _apart(module: str) -> bool:
    return _in(module, APART)


def wrong_arrow(source: str, target: str) -> str | None:
    """Why ``source`` must not import ``target``; None if it may."""
    if _apart(source) or _apart(target):
        if _apart(source) != _apart(target) and not (
                _apart(source) and layer_of(target) == 0):
            return f"{source} -> {target}: fakecloud stands apart"
        return None
    s, t = layer_of(source), layer_of(target)
    if s is None or t is None:
        return f"{source} -> {target}: module in no layer; add it to LAYERS"
    if t > s:
        return f"{source} ({LAYERS[s][0]}) -> {target} ({LAYERS[t][0]})"
    if (source.startswith("nodepool.driver") and target.startswith("nodepool.zk.")
            and target not in DRIVER_MAY_USE_OF_ZK):
        return f"{source} -> {target}: a driver never uses the ZooKeeper layer"
    if _in(source, ("nodepool.config",)) and _in(target, CONFIG_NEVER_USES):
        return (f"{source} -> {target}: the configuration never imports the drivers "
                "or ZooKeeper (whoever loads it passes the drivers in)")
    return None


def broken_contract(source: str, target: str) -> str | None:
    """Which contract inside a package ``source -> target`` breaks; None if none."""
    for c in INSIDE_PACKAGES:
        if _in(source, c.sources) and not _in(source, c.except_sources) \
                and _in(target, c.targets) and not _in(target, c.except_targets):
            return f"{source} -> {target}: {c.why}"
    return None


def wrong_arrows() -> list[str]:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _module_name(path)
        for target in sorted(imports_of(path)):
            if target == "nodepool":
                continue
            if why := wrong_arrow(source, target) or broken_contract(source, target):
                wrong.append(why)
    return wrong


def test_imports_follow_the_layers():
    assert wrong_arrows() == []


def test_the_check_sees_an_arrow_against_the_order(tmp_path, monkeypatch):
    """The walker finds imports at any depth, ``from pkg import mod`` included."""
    probe = ROOT / "zk" / "records.py"
    found = imports_of(probe)
    assert all(layer_of(m) == 0 for m in found), found
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from nodepool import launcher\n    import nodepool.cmd.common\n")
    monkeypatch.setattr("tests.test_layers._module_name", lambda p: "nodepool.zk.bad")
    assert imports_of(bad) == {"nodepool.launcher", "nodepool.cmd.common"}
    assert layer_of("nodepool.zk.bad") == 1
    assert [layer_of(m) for m in sorted(imports_of(bad))] == [5, 4]


def test_the_configuration_uses_nothing_of_the_drivers_or_zookeeper():
    """Not even their pure modules, which the layer order alone would allow."""
    for target in ("nodepool.driver.registry", "nodepool.driver.outcomes",
                   "nodepool.zk.client", "nodepool.zk.records"):
        assert wrong_arrow("nodepool.config.loader", target), target
    assert wrong_arrow("nodepool.driver.registry", "nodepool.config.model") is None
    assert wrong_arrow("nodepool.config.loader", "nodepool.config.schema") is None


def test_loading_a_configuration_imports_no_driver_or_zookeeper_module():
    """The same at run time, where an import by name (importlib) would show."""
    code = ("import sys; from nodepool.config import validate; "
            f"validate({str(ROOT.parent / 'etc' / 'nodepool.yaml')!r}, drivers={{}}); "
            "bad = [m for m in sys.modules if m.startswith(('nodepool.driver', 'nodepool.zk'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, in a circle (the
    strongly connected components of more than one module)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return circles


def test_no_import_circle_inside_the_drivers_and_the_launcher():
    """A circle (even through an import only a type checker follows) makes
    two modules one: neither can be read, changed or tested alone."""
    for package in NO_CIRCLES:
        graph = {_module_name(path): imports_of(path) for path in sorted(ROOT.rglob("*.py"))
                 if _in(_module_name(path), (package,))}
        assert import_circles(graph) == [], package


def test_the_circle_check_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_the_contracts_inside_packages_name_modules_that_exist():
    """A module renamed or moved would otherwise empty a contract silently."""
    missing = sorted({n for c in INSIDE_PACKAGES for n in c.names() if not _is_module(n)})
    assert missing == []


def test_the_contracts_inside_packages_see_an_arrow_they_forbid():
    assert broken_contract("nodepool.zk.membership", "nodepool.zk.store")
    assert broken_contract("nodepool.zk.locks", "nodepool.zk.cache")
    assert broken_contract("nodepool.zk.locks", "nodepool.zk.session") is None
    assert broken_contract("nodepool.zk.store", "nodepool.zk.shared_quota")
    assert broken_contract("nodepool.zk.project_book", "nodepool.zk.store")
    assert broken_contract("nodepool.zk.provider_share", "nodepool.zk.cache")
    assert broken_contract("nodepool.zk.store", "nodepool.zk.node_admin")
    assert broken_contract("nodepool.zk.node_admin", "nodepool.zk.store") is None
    assert broken_contract("nodepool.driver.server_list", "nodepool.driver.openstack.cloud")
    assert broken_contract("nodepool.driver.static.provider", "nodepool.driver.openstack")
    assert broken_contract("nodepool.driver.openstack.provider",
                           "nodepool.driver.server_list") is None
    assert broken_contract("nodepool.driver.openstack.model", "nodepool.driver.gate")
    assert broken_contract("nodepool.driver.openstack.reconcile",
                           "nodepool.driver.openstack.provider")
    assert broken_contract("nodepool.driver.openstack.provider",
                           "nodepool.driver.openstack.reconcile") is None
    assert broken_contract("nodepool.driver.openstack.context",
                           "nodepool.driver.openstack.deletion")
    assert broken_contract("nodepool.driver.openstack.deletion",
                           "nodepool.driver.openstack.context") is None

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

Every import counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
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


def wrong_arrows() -> list[str]:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _module_name(path)
        for target in sorted(imports_of(path)):
            if target != "nodepool" and (why := wrong_arrow(source, target)):
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

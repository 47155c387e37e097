"""doc/architecture.rst says what the code is.

Its import rules are exactly those tests/test_layers.py enforces: the
tables "Layers, lowest first", "Rules beyond the order" and "Contracts
inside packages" and the diagram of the section "The arrows" are read with
docutils (which Sphinx, of the test extra, brings) and compared with
``LAYERS``, ``APART``, ``DRIVER_MAY_USE_OF_ZK``, ``CONFIG_NEVER_USES`` and
``INSIDE_PACKAGES``.  Every package has its entry under "The packages".

And everything it names exists: each literal that is a path
(``nodepool/zk/cache.py``), a module or an object in one
(``nodepool.requests.admission.Admission``), or a class, alone or with a
member (``NodeBuilder.start_build``).  A ``.py`` file named by anything but
its path from the top of the repository is an error too, so that no name
slips past the check.  A module moved or renamed fails this test until the
page says where it went.
"""

from __future__ import annotations

import ast
import collections
import importlib
import importlib.util
import pathlib
import re

from docutils import nodes
from docutils.core import publish_doctree

from tests.test_layers import (APART, CONFIG_NEVER_USES, DRIVER_MAY_USE_OF_ZK, INSIDE_PACKAGES,
                               LAYERS)

TOP = pathlib.Path(__file__).resolve().parent.parent
PAGE = TOP / "doc" / "architecture.rst"

LAYERS_TABLE = "Layers, lowest first"
RULES_TABLE = "Rules beyond the order"
CONTRACTS_TABLE = "Contracts inside packages"
RULES = {"APART": APART, "DRIVER_MAY_USE_OF_ZK": DRIVER_MAY_USE_OF_ZK,
         "CONFIG_NEVER_USES": CONFIG_NEVER_USES}

PATH = re.compile(r"^(nodepool|doc|tests|tools|etc)/[\w./-]*$")
DOTTED = re.compile(r"^nodepool(\.[A-Za-z_]\w*)+$")
# A class, alone or with one member: ``ApiGate``, ``NodeBuilder.poll_build``
# (``READY`` and ``APART`` are constants, not classes).
CLASS = re.compile(r"^(?P<cls>[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)(\.(?P<member>[a-z_]\w*))?$")
# ``nodepool.yaml`` names a file, not a module.
FILE_SUFFIXES = ("yaml", "yml", "json", "rst", "cfg", "conf", "service", "py")


def doctree(text: str) -> nodes.document:
    # Sphinx's roles (:doc:) are unknown to plain docutils: not reported.
    return publish_doctree(text, settings_overrides={
        "report_level": 5, "halt_level": 5, "file_insertion_enabled": False,
        "raw_enabled": False})


def page() -> nodes.document:
    return doctree(PAGE.read_text())


def section(doc: nodes.document, title: str) -> nodes.section:
    for found in doc.findall(nodes.section):
        if found[0].astext() == title:
            return found
    raise AssertionError(f"{PAGE.name}: no section {title!r}")


def table_rows(doc: nodes.document, title: str) -> list[list[nodes.entry]]:
    """The body rows of the table with this title, as lists of cells."""
    for table in doc.findall(nodes.table):
        titles = [c for c in table.children if isinstance(c, nodes.title)]
        if titles and titles[0].astext() == title:
            return [[cell for cell in row.children if isinstance(cell, nodes.entry)]
                    for body in table.findall(nodes.tbody) for row in body.children]
    raise AssertionError(f"{PAGE.name}: no table {title!r}")


def literals(node: nodes.Node) -> list[str]:
    return [n.astext() for n in node.findall(nodes.literal)]


def split_except(cell: nodes.entry) -> tuple[frozenset[str], frozenset[str]]:
    """The names of a cell, and those after its word "except"."""
    named: list[str] = []
    excepted: list[str] = []
    into = named
    for n in cell.findall(lambda n: isinstance(n, (nodes.literal, nodes.Text))):
        if isinstance(n, nodes.literal):
            into.append(n.astext())
        elif not isinstance(n.parent, nodes.literal) and "except" in n.astext().split():
            into = excepted
    return frozenset(named), frozenset(excepted)


def rule_problems(doc: nodes.document) -> list[str]:
    """Where the page's rules differ from tests/test_layers.py's."""
    problems = []
    stated = {row[0].astext().strip(): frozenset(literals(row[1]))
              for row in table_rows(doc, LAYERS_TABLE)}
    if list(stated) != [name for name, _ in LAYERS]:
        problems.append(f"{LAYERS_TABLE}: the page's order is {list(stated)}, LAYERS's "
                        f"{[name for name, _ in LAYERS]}")
    for name, prefixes in LAYERS:
        page_has = stated.get(name, frozenset())
        if page_has != frozenset(prefixes):
            problems.append(f"{LAYERS_TABLE}: layer {name}: the page lacks "
                            f"{sorted(set(prefixes) - page_has)}, LAYERS lacks "
                            f"{sorted(page_has - set(prefixes))}")
    stated_rules = {" ".join(literals(row[0])): frozenset(literals(row[1]))
                    for row in table_rows(doc, RULES_TABLE)}
    enforced_rules = {name: frozenset(names) for name, names in RULES.items()}
    if stated_rules != enforced_rules:
        problems.append(f"{RULES_TABLE}: the page says {stated_rules}, "
                        f"the layer test {enforced_rules}")
    stated_contracts = collections.Counter(
        (*split_except(row[0]), *split_except(row[1]))
        for row in table_rows(doc, CONTRACTS_TABLE))
    enforced_contracts = collections.Counter(
        (frozenset(c.sources), frozenset(c.except_sources),
         frozenset(c.targets), frozenset(c.except_targets)) for c in INSIDE_PACKAGES)
    for contract in (stated_contracts - enforced_contracts):
        problems.append(f"{CONTRACTS_TABLE}: the page has {contract}, INSIDE_PACKAGES not")
    for contract in (enforced_contracts - stated_contracts):
        problems.append(f"{CONTRACTS_TABLE}: INSIDE_PACKAGES has {contract}, the page not")
    return problems


def diagram_problems(doc: nodes.document) -> list[str]:
    """The diagram lists the layers from the top, one per line, with the
    packages that stand apart beside them."""
    blocks = list(section(doc, "The arrows").findall(nodes.literal_block))
    if not blocks:
        return ["The arrows: no diagram"]
    text = blocks[0].astext()
    drawn = [line.split()[0] for line in text.splitlines()
             if line.split() and re.match(r"\w", line.split()[0])]
    problems = []
    if drawn != [name for name, _ in reversed(LAYERS)]:
        problems.append(f"the diagram draws {drawn}, LAYERS from the top is "
                        f"{[name for name, _ in reversed(LAYERS)]}")
    for apart in APART:
        if apart.rpartition(".")[2] not in text.split():
            problems.append(f"the diagram does not show {apart} apart")
    return problems


def _members(node: ast.ClassDef) -> set[str]:
    found = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            found.add(item.target.id)
        elif isinstance(item, ast.Assign):
            found |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    return found


def classes() -> dict[str, set[str]]:
    """Every class of the package, with its members (classes of one name merged)."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for path in (TOP / "nodepool").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                found[node.name] |= _members(node)
    return found


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolves(dotted: str) -> bool:
    """A module, or an object reached from the longest module of the name.
    A class or function named in a module (not a package, which may export
    what its modules define) must be defined there, not merely imported: a
    class moved to another module leaves its name importable from the old
    one, and the page would send the reader to the wrong file."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if is_module(module):
            obj = importlib.import_module(module)
            is_package = hasattr(obj, "__path__")
            for attribute in parts[cut:]:
                if not hasattr(obj, attribute):
                    return False
                obj = getattr(obj, attribute)
            if cut < len(parts) and not is_package:
                first = getattr(importlib.import_module(module), parts[cut])
                if getattr(first, "__module__", module) != module:
                    return False
            return True
    return False


def unknown_names(doc: nodes.document) -> list[str]:
    """The literals of the page that name something the tree does not have."""
    known_classes = classes()
    unknown = []
    for name in sorted(set(literals(doc))):
        if PATH.match(name):
            if not (TOP / name).exists():
                unknown.append(f"{name}: no such file or directory")
        elif name.endswith(".py"):
            unknown.append(f"{name}: name a file by its path from the top")
        elif DOTTED.match(name) and name.rpartition(".")[2] not in FILE_SUFFIXES:
            if not resolves(name):
                unknown.append(f"{name}: no such module, or no such object defined there")
        elif m := CLASS.match(name):
            members = known_classes.get(m["cls"])
            if members is None:
                unknown.append(f"{name}: no such class in nodepool")
            elif m["member"] and m["member"] not in members:
                unknown.append(f"{name}: {m['cls']} has no {m['member']}")
    return unknown


def test_the_page_states_the_rules_the_layer_test_enforces():
    assert rule_problems(page()) == []


def test_the_diagram_draws_the_layers_in_order():
    assert diagram_problems(page()) == []


def test_every_name_on_the_page_exists():
    assert unknown_names(page()) == []


def test_every_package_has_an_entry():
    doc = page()
    entries = {term.astext() for term in section(doc, "The packages").findall(nodes.term)}
    packages = {f"{p.parent.relative_to(TOP).as_posix()}/"
                for p in (TOP / "nodepool").rglob("__init__.py")} - {"nodepool/"}
    assert sorted(packages - entries) == []
    assert sorted(entries - packages) == []


def test_a_rule_stated_wrong_is_caught():
    text = PAGE.read_text()
    assert rule_problems(doctree(text)) == []
    # requests drawn above driver
    swapped = text.replace("   * - requests\n     - ``nodepool.requests``\n", "").replace(
        "   * - launcher\n", "   * - requests\n     - ``nodepool.requests``\n   * - launcher\n")
    assert swapped != text
    assert any(p.startswith(LAYERS_TABLE) for p in rule_problems(doctree(swapped)))
    fewer = text.replace("``nodepool.zk.ids``,\n       ``nodepool.zk.image_records``\n     - All",
                         "``nodepool.zk.ids``\n     - All")
    assert fewer != text
    assert any(p.startswith(RULES_TABLE) for p in rule_problems(doctree(fewer)))
    no_except = text.replace("``nodepool.zk``, except ``nodepool.zk.node_admin``",
                             "``nodepool.zk``, ``nodepool.zk.node_admin``")
    assert no_except != text
    assert len([p for p in rule_problems(doctree(no_except))
                if p.startswith(CONTRACTS_TABLE)]) == 2
    flat = text.replace("    driver\n     |\n    requests\n", "    requests\n     |\n    driver\n")
    assert flat != text
    assert diagram_problems(doctree(flat))


def test_a_name_that_does_not_exist_is_caught():
    doc = doctree("``nodepool/requests/admission.py``, ``nodepool/requests/admissions.py``, "
                  "``admission.py``, ``nodepool.requests.admission.Admission``, "
                  "``nodepool.requests.admission.Admissions``, ``nodepool.requests.nothing``, "
                  "``nodepool.yaml``, ``ApiGate``, ``ApiGates``, ``NodeBuilder.start_build``, "
                  "``NodeBuilder.start_building``, ``READY``\n")
    assert [u.partition(":")[0] for u in unknown_names(doc)] == [
        "ApiGates", "NodeBuilder.start_building", "admission.py",
        "nodepool.requests.admission.Admissions", "nodepool.requests.nothing",
        "nodepool/requests/admissions.py"]

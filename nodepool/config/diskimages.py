"""The top-level ``diskimages`` list: the images upstream's nodepool-builder
builds.  The launcher reads of them only what a node booted from one needs
(``username``, ``python-path``, ``shell-type``), after upstream's
inheritance: an entry takes its ``parent``'s values (recursively) and
overrides those it sets; ``abstract`` entries are only parents.
"""

from __future__ import annotations

from nodepool.config.errors import Problems, check_unique
from nodepool.config.model import DiskImage

# Our key -> nodepool.yaml's.  Upstream merges only the values that are set
# (a false or empty value does not override the parent's).
_INHERITED = {"username": "username", "python_path": "python-path",
              "shell_type": "shell-type", "pause": "pause"}


def build_diskimages(items: list[dict], problems: Problems) -> dict[str, DiskImage]:
    """Every non-abstract diskimage by name; each entry already passed
    ``diskimage_schema``.  Errors: duplicate names, unknown or circular parents."""
    check_unique(items, "name", ["diskimages"], problems, "diskimage")
    by_name = {d["name"]: d for d in items}
    out: dict[str, DiskImage] = {}
    for j, entry in enumerate(items):
        chain = _ancestry(j, entry, by_name, problems)
        if chain is None or entry.get("abstract", False):
            continue
        values: dict = {}
        for link in reversed(chain):  # the oldest ancestor first
            for ours, key in _INHERITED.items():
                if link.get(key):
                    values[ours] = link[key]
        out[entry["name"]] = DiskImage(name=entry["name"], **values)
    return out


def _ancestry(j: int, entry: dict, by_name: dict[str, dict],
              problems: Problems) -> list[dict] | None:
    """The entry and its parents, nearest first; None (reported) if broken."""
    chain = [entry]
    while "parent" in chain[-1]:
        parent = chain[-1]["parent"]
        if parent not in by_name:
            problems.error(["diskimages", j, "parent"],
                           f"parent diskimage {parent!r} is not defined in the top-level "
                           f"'diskimages' list (defined: {', '.join(sorted(by_name))})")
            return None
        if any(link["name"] == parent for link in chain):
            names = " -> ".join([link["name"] for link in chain] + [parent])
            problems.error(["diskimages", j, "parent"],
                           f"diskimage parents form a loop ({names}); remove one 'parent'")
            return None
        chain.append(by_name[parent])
    return chain

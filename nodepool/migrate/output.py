"""The three texts of a migration: Zuul's objects (YAML for a config
repository), the ``zuul.conf`` fragment, and the report."""

from __future__ import annotations

import os

import yaml

from nodepool.migrate.zuul_launcher import PLACEHOLDER, Migration

OBJECTS_FILE = "zuul-launcher.yaml"
ZUUL_CONF_FILE = "zuul.conf"
REPORT_FILE = "migration-report.txt"


def objects_yaml(mig: Migration, source: str) -> str:
    head = (f"# Zuul launcher objects translated from {source} by "
            "'nodepool migrate zuul-launcher'.\n"
            "# Put them in a config project (e.g. zuul.d/launcher.yaml); values starting "
            f"with {PLACEHOLDER} need your choice (see {REPORT_FILE}).\n")
    return head + yaml.safe_dump(mig.objects, sort_keys=False, default_flow_style=False,
                                 width=100)


def zuul_conf(mig: Migration, source: str) -> str:
    lines = [f"# zuul.conf connections for zuul-launcher, from {source}."]
    for name, settings in mig.connections.items():
        lines.append("")
        lines.append(f'[connection "{name}"]')
        lines.extend(f"{k}={v}" for k, v in settings.items())
    if mig.scheduler:
        lines.append("")
        lines.append("# From max-hold-age: how long Zuul's autohold may keep nodes.")
        lines.append("# [scheduler]")
        lines.extend(f"# {k}={v}" for k, v in mig.scheduler.items())
    return "\n".join(lines) + "\n"


def report(mig: Migration, source: str) -> str:
    out = [f"Moving {source} to zuul-launcher"
           + (f" (tenant {mig.tenant})" if mig.tenant else ""), ""]
    out.append("Labels Zuul will take from zuul-launcher: "
               + (", ".join(mig.migrated_labels) or "none"))
    out.append("Labels that stay on this launcher: " + (", ".join(mig.kept_labels) or "none"))
    out.append("")
    out.extend(f"* {n}" for n in mig.notes)
    # Keys that share a decision (the builder's keys, say) are listed together.
    grouped: dict[str, list[str]] = {}
    for o in mig.choices:
        grouped.setdefault(o.decide, []).append(o.path)
    out += ["", f"To decide or do ({len(grouped)}):"]
    for i, (decide, paths) in enumerate(grouped.items(), 1):
        out.append(f"{i}. {', '.join(paths)}: {decide}")
    out += ["", "Every key of the file and what it became:"]
    out.extend(f"{o.path}: {o.became}" for o in mig.outcomes)
    return "\n".join(out) + "\n"


def write(mig: Migration, source: str, directory: str) -> list[str]:
    """The three files in ``directory`` (created if missing); their paths."""
    texts = {OBJECTS_FILE: objects_yaml(mig, source), ZUUL_CONF_FILE: zuul_conf(mig, source),
             REPORT_FILE: report(mig, source)}
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths

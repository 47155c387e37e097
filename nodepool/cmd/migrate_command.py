"""``nodepool migrate zuul-launcher``: nodepool.yaml translated for Zuul's
own launcher (the translation is nodepool.migrate's; this is its command)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nodepool.cmd.common import add_config_options, print_problems
from nodepool.cmd.subcommand import CommandError
from nodepool.config import validate
from nodepool.driver import registry


def cmd_migrate_zuul_launcher(args: argparse.Namespace) -> int:
    import os

    from nodepool.config.errors import Problems
    from nodepool.config.loader import read_yaml
    from nodepool.migrate import output
    from nodepool.migrate.zuul_launcher import MigrationError, translate

    # The same checks and messages as config-validate: nothing is written
    # from a file that does not load.
    config, problems = validate(args.config, args.clouds, args.secure,
                                drivers=registry.drivers())
    if config is None:
        print_problems(problems)
        raise CommandError(f"{args.config} has errors; nothing written")
    raw = read_yaml(args.config, Problems(args.config), os.environ) or {}
    labels = [n.strip() for n in args.labels.split(",") if n.strip()] if args.labels \
        else None
    try:
        mig = translate(config, raw, labels, args.tenant)
    except MigrationError as e:
        raise CommandError(f"{e}; nothing written") from None
    if args.output:
        try:
            written = output.write(mig, args.config, args.output)
        except OSError as e:
            raise CommandError(f"-o {args.output}: {e.strerror or e}") from None
        for path in written:
            print(f"wrote {path}")
    else:
        print(output.objects_yaml(mig, args.config))
        print(output.zuul_conf(mig, args.config))
        print(output.report(mig, args.config), end="")
    print(f"{len(mig.migrated_labels)} label(s) for zuul-launcher, {len(mig.kept_labels)} "
          f"staying here; {len({o.decide for o in mig.choices})} point(s) to decide (see the "
          "report)",
          file=sys.stderr)
    return 0


def add_migrate_command(sub: Any) -> None:
    """``migrate`` and its targets."""
    migrate = sub.add_parser("migrate", help="translate nodepool.yaml for another launcher",
                             description="Translate nodepool.yaml for another launcher.")
    targets = migrate.add_subparsers(dest="target", metavar="TARGET", required=True)
    p = targets.add_parser(
        "zuul-launcher", help="write Zuul's launcher objects, zuul.conf connections and a "
                              "report",
        description="Translate nodepool.yaml (and clouds.yaml) into Zuul's image, flavor, "
                    "label, section and provider objects, the zuul.conf [connection] "
                    "stanzas of the clouds, and a report of what every key became and "
                    "what is left for you to decide.  Nothing is written when the file "
                    "has errors (as config-validate reports them).")
    add_config_options(p, suppress=True)
    p.add_argument("--tenant", help="the Zuul tenant that will use these objects (the "
                                    "report then covers its tenant-resource-limits)")
    p.add_argument("--labels", metavar="L,...",
                   help="migrate only these labels (comma separated); the others stay "
                        "on this launcher")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="write zuul-launcher.yaml, zuul.conf and migration-report.txt into DIR "
                        "(created if missing) instead of printing them")
    p.set_defaults(func=cmd_migrate_zuul_launcher)

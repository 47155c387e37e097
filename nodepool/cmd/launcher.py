"""``nodepool-launcher``: the daemon that serves node requests.

It refuses to start on an invalid configuration, with the same messages as
``nodepool config-validate``.  ``-d`` keeps it in the foreground (systemd's
``Type=simple``); without it, it detaches with python-daemon and holds a
locked pid file so a second copy refuses to start.

Signals: SIGTERM/SIGINT stop gracefully; SIGUSR2 writes every thread's stack
and the launcher's in-flight state to the log; SIGHUP (or a change to one of
the configuration files) reloads the configuration without dropping nodes
in flight, and keeps the old one if the new one has errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import signal
import sys
import threading
import traceback

from nodepool.cmd.common import add_config_options, print_problems
from nodepool.config import validate

log = logging.getLogger("nodepool.launcher.cmd")
STOP_TIMEOUT = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodepool-launcher",
        description="Serve Zuul's node requests on OpenStack clouds.")
    add_config_options(parser)
    parser.add_argument("-d", "--nodaemon", action="store_true",
                        help="stay in the foreground (for systemd's Type=simple)")
    parser.add_argument("-l", "--logconfig", metavar="PATH",
                        help="Python logging configuration: a dictConfig YAML file, or an "
                             "INI file for logging.config.fileConfig; default with -d: "
                             "INFO to stderr; required without -d")
    parser.add_argument("-p", "--pidfile", metavar="PATH",
                        default="/var/run/nodepool/launcher.pid",
                        help="pid file when running as a daemon; a second launcher with "
                             "the same pid file refuses to start "
                             "(default: /var/run/nodepool/launcher.pid)")
    parser.add_argument("--validate-only", action="store_true",
                        help="load and check the configuration, then exit")
    return parser


def setup_logging(path: str | None) -> None:
    if not path:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    if path.endswith((".yaml", ".yml")):
        import yaml
        with open(path) as f:
            logging.config.dictConfig(yaml.safe_load(f))
    else:
        logging.config.fileConfig(path, disable_existing_loggers=False)


def dump_state(launcher) -> str:
    """Every thread's stack and the launcher's in-flight work, as text."""
    lines = ["--- thread stacks ---"]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"Thread {names.get(ident, '?')} ({ident}):")
        lines.extend(x.rstrip() for x in traceback.format_stack(frame))
    lines.append("--- launcher state ---")
    try:
        lines.append(json.dumps(launcher.status(), indent=1, sort_keys=True, default=str))
    except Exception as e:  # noqa: BLE001 - a dump must not fail
        lines.append(f"(status unavailable: {e})")
    return "\n".join(lines)


def _mtimes(paths: list[str | None]) -> dict[str, float | None]:
    out = {}
    for path in paths:
        if path:
            try:
                out[path] = os.stat(path).st_mtime
            except OSError:
                out[path] = None
    return out


def reload_config(launcher, args) -> bool:
    """Validate the files again and apply them; on errors keep running as is."""
    config, problems = validate(args.config, args.clouds, args.secure)
    for p in problems:
        (log.error if p.severity == "error" else log.warning)("%s", p)
    if config is None:
        log.error("configuration not reloaded: it has errors; the previous one stays")
        return False
    launcher.reload(config)
    return True


def run(config, args) -> int:
    from nodepool.launcher.launcher import Launcher

    launcher = Launcher(config)
    stop = threading.Event()
    reload_wanted = threading.Event()

    def on_stop(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_dump(signum, frame):
        log.warning("SIGUSR2 state dump:\n%s", dump_state(launcher))

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR2, on_dump)
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_wanted.set())
    try:
        launcher.start()
    except Exception as e:  # noqa: BLE001 - say why, cleanly
        log.error("cannot start: %s", e)
        launcher.stop(wait=5)
        return 1
    watched = [args.config, args.secure, config.clouds_file]
    seen = _mtimes(watched)
    while not stop.wait(1.0):
        now = _mtimes(watched)
        if now != seen:
            log.info("configuration file changed; reloading")
            seen = now
            reload_wanted.set()
        if reload_wanted.is_set():
            reload_wanted.clear()
            try:
                reload_config(launcher, args)
            except Exception:  # noqa: BLE001 - a bad reload must not stop the service
                log.exception("configuration reload failed; the previous one stays")
    launcher.stop(wait=STOP_TIMEOUT)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, problems = validate(args.config, args.clouds, args.secure)
    print_problems(problems)
    if config is None:
        print("nodepool-launcher: refusing to start: the configuration has errors",
              file=sys.stderr)
        return 1
    if args.validate_only:
        print(f"nodepool-launcher: configuration {args.config} is valid "
              f"({len(config.providers)} provider(s), "
              f"{sum(1 for _ in config.pools())} pool(s))")
        return 0
    if args.nodaemon:
        setup_logging(args.logconfig)
        return run(config, args)
    if not args.logconfig:
        # A detached daemon has no stderr: its log would be lost.
        print("nodepool-launcher: running detached needs -l LOGCONFIG saying where the log "
              "goes (see etc/logging.yaml); or use -d to stay in the foreground and log to "
              "stderr (systemd)", file=sys.stderr)
        return 2

    import daemon
    from daemon.pidfile import TimeoutPIDLockFile

    pid_dir = os.path.dirname(os.path.abspath(args.pidfile))
    os.makedirs(pid_dir, exist_ok=True)
    pidfile = TimeoutPIDLockFile(args.pidfile, acquire_timeout=0)
    if pidfile.is_locked():
        pid = pidfile.read_pid()
        try:
            if pid:
                os.kill(pid, 0)
                print(f"nodepool-launcher: already running (pid {pid}, {args.pidfile})",
                      file=sys.stderr)
                return 1
        except ProcessLookupError:
            pass
        except PermissionError:
            print(f"nodepool-launcher: already running (pid {pid}, {args.pidfile})",
                  file=sys.stderr)
            return 1
        print(f"nodepool-launcher: removing stale pid file {args.pidfile} (pid {pid})",
              file=sys.stderr)
        pidfile.break_lock()
    with daemon.DaemonContext(pidfile=pidfile, umask=0o022,
                              working_directory=os.getcwd()):
        setup_logging(args.logconfig)
        return run(config, args)


if __name__ == "__main__":
    sys.exit(main())

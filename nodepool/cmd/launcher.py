"""``nodepool-launcher``: the daemon that serves node requests.

It refuses to start on an invalid configuration, with the same messages as
``nodepool config-validate``.  Its options are upstream Nodepool's: ``-f``
keeps it in the foreground (systemd's ``Type=simple``, containers), ``-d``
too with DEBUG logging; without either it detaches with python-daemon and
holds a locked pid file (``-p``) so a second copy refuses to start.
Without ``-l`` it logs to stdout in the foreground and to
``/var/log/nodepool/nodepool.log`` when detached, as upstream.

Signals: SIGTERM, SIGINT and SIGUSR1 (upstream's) stop gracefully; SIGUSR2
writes every thread's stack and the launcher's in-flight state to the log;
SIGHUP (or a change to one of the configuration files) reloads the
configuration without dropping nodes in flight, and keeps the old one if
the new one has errors.
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

from nodepool.cmd.common import (add_config_options, add_version_option,
                                 apply_logging_file, print_problems)
from nodepool.config import validate
from nodepool.driver import registry

log = logging.getLogger("nodepool.launcher.cmd")
STOP_TIMEOUT = 30.0
DEFAULT_PIDFILE = "/var/run/nodepool/nodepool.pid"
# Where a detached launcher without -l logs (upstream's place).
DEFAULT_LOG_FILE = "/var/log/nodepool/nodepool.log"
# Files a detached launcher creates (its log, a -l configuration's) are
# readable by its group at most.
LOG_MODE = 0o640
DAEMON_UMASK = 0o027
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodepool-launcher",
        description="Serve Zuul's node requests on OpenStack clouds.")
    add_config_options(parser)
    add_version_option(parser)
    parser.add_argument("-f", dest="foreground", action="store_true",
                        help="stay in the foreground (systemd's Type=simple, containers)")
    parser.add_argument("-d", dest="debug", action="store_true",
                        help="stay in the foreground and log at DEBUG level "
                             "(unless -l says otherwise)")
    parser.add_argument("-l", dest="logconfig", metavar="PATH",
                        help="logging configuration: a .yaml/.yml/.json dictConfig file, "
                             "else an INI file for logging.config.fileConfig; default: "
                             f"stdout in the foreground, {DEFAULT_LOG_FILE} when detached")
    parser.add_argument("-p", dest="pidfile", metavar="PATH", default=DEFAULT_PIDFILE,
                        help="pid file when detached; a second launcher with the same pid "
                             f"file refuses to start (default: {DEFAULT_PIDFILE})")
    parser.add_argument("--no-webapp", action="store_true",
                        help="do not serve the status API (webapp in nodepool.yaml)")
    parser.add_argument("--validate-only", action="store_true",
                        help="load and check the configuration, then exit")
    return parser


def default_logging(debug: bool = False, log_file: str | None = None) -> dict:
    """Upstream's default: the launcher's own loggers at INFO (DEBUG with
    -d), libraries (kazoo, openstacksdk, requests) at WARNING; to stdout, or
    to ``log_file`` (reopened after logrotate moved it)."""
    if log_file is None:
        handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    else:
        handler = {"class": "logging.handlers.WatchedFileHandler", "filename": log_file}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"simple": {"format": LOG_FORMAT}},
            "handlers": {"main": dict(handler, formatter="simple")},
            "loggers": {"nodepool": {"level": "DEBUG" if debug else "INFO"}},
            "root": {"level": "WARNING", "handlers": ["main"]}}


def setup_logging(path: str | None, debug: bool = False, log_file: str | None = None) -> None:
    """``-l`` if given, else :func:`default_logging`."""
    if path:
        apply_logging_file(path)
    else:
        logging.config.dictConfig(default_logging(debug, log_file))


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
    config, problems = validate(args.config, args.clouds, args.secure,
                                drivers=registry.drivers())
    for p in problems:
        (log.error if p.severity == "error" else log.warning)("%s", p)
    if config is None:
        log.error("configuration not reloaded: it has errors; the previous one stays")
        return False
    launcher.reload(config)
    return True


def run(config, args) -> int:
    from nodepool.launcher.launcher import Launcher

    launcher = Launcher(config, webapp=not args.no_webapp)
    stop = threading.Event()
    reload_wanted = threading.Event()
    dump_wanted = threading.Event()
    stop_signal: list[str] = []

    # Signal handlers run on the main thread between two bytecodes, perhaps
    # while it holds the ledger's or the logging module's lock (in a
    # reload): they only set a flag, and the loop below does the work.
    def on_stop(signum, frame):
        stop_signal.append(signal.Signals(signum).name)
        stop.set()

    def on_dump(signum, frame):
        dump_wanted.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_stop)  # upstream's graceful stop
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
    while not stop.wait(0.5):
        if dump_wanted.is_set():
            dump_wanted.clear()
            log.warning("SIGUSR2 state dump:\n%s", dump_state(launcher))
        now = _mtimes(watched)
        if now != seen:
            log.info("configuration file changed; reloading")
            seen = now
            reload_wanted.set()
        if reload_wanted.is_set():
            reload_wanted.clear()
            try:
                reload_config(launcher, args)
            except Exception:  # a bad reload must not stop the service
                log.exception("configuration reload failed; the previous one stays")
    log.info("signal %s: stopping", stop_signal[0] if stop_signal else "?")
    launcher.stop(wait=STOP_TIMEOUT)
    return 0


def check_log_destination(logconfig: str | None) -> str | None:
    """Why a detached launcher could not log, or None.  Without -l the
    log file's directory is created (as root) and must be writable."""
    if logconfig:
        return None if os.path.exists(logconfig) else \
            f"{logconfig}: logging configuration file not found"
    directory = os.path.dirname(DEFAULT_LOG_FILE)
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        # The log names nodes, servers and addresses: not for every local
        # user.  A file left readable by an older version is tightened.
        os.close(os.open(DEFAULT_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE))
        mode = os.stat(DEFAULT_LOG_FILE).st_mode & 0o777
        if mode & ~LOG_MODE:
            os.chmod(DEFAULT_LOG_FILE, mode & LOG_MODE)
    except OSError as e:
        return (f"cannot write the log {DEFAULT_LOG_FILE} ({e.strerror}); give -l a "
                "logging configuration, or -f to log to stdout in the foreground")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, problems = validate(args.config, args.clouds, args.secure,
                                drivers=registry.drivers())
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
    if args.foreground or args.debug:
        try:
            setup_logging(args.logconfig, args.debug)
        except ValueError as e:
            print(f"nodepool-launcher: {e}", file=sys.stderr)
            return 1
        return run(config, args)
    # Detached there is no terminal: check the log goes somewhere first.
    problem = check_log_destination(args.logconfig)
    if problem:
        print(f"nodepool-launcher: {problem}", file=sys.stderr)
        return 1

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
    with daemon.DaemonContext(pidfile=pidfile, umask=DAEMON_UMASK,
                              working_directory=os.getcwd()):
        setup_logging(args.logconfig, log_file=None if args.logconfig else DEFAULT_LOG_FILE)
        return run(config, args)


if __name__ == "__main__":
    sys.exit(main())

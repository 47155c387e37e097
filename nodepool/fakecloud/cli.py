"""``nodepool-fakecloud``: run the simulated cloud as a process."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

import yaml

from nodepool.fakecloud.cloud import FakeCloud
from nodepool.fakecloud.config import (LIMIT_KEYS, FakeCloudConfigError, config_from_dict,
                                       load_config)

DEFAULT_PORT = 8789

EPILOG = f"""\
When it listens, it prints one line to stdout and flushes it:

  READY url=http://127.0.0.1:{DEFAULT_PORT} auth_url=http://127.0.0.1:{DEFAULT_PORT}/identity/v3 \
admin_url=http://127.0.0.1:{DEFAULT_PORT}/_fakecloud/

and serves until SIGTERM or SIGINT.  Options given here override the
configuration file (see etc/fakecloud.yaml and doc/fakecloud.rst).  Seconds
may be one number or LOW,HIGH for a uniform random draw.  The admin API under
/_fakecloud/ (counters, usage, limits, settings, release, wipe) changes the
cloud while it runs.

exit status: 0 stopped by a signal (or --check-config passed), 1 cannot
listen, 2 bad configuration.
"""


def _seconds(text: str) -> float | list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds as N or LOW,HIGH, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values
    raise argparse.ArgumentTypeError(f"expected seconds as N or LOW,HIGH, got {text!r}")


def _limit(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or key not in LIMIT_KEYS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=N with KEY one of {', '.join(LIMIT_KEYS)}, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: expected an integer (-1 = unlimited), "
                                         f"got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodepool-fakecloud",
        description="A simulated OpenStack cloud (keystone, nova, glance, neutron, cinder) "
                    "with nova's quota rules and fault injection, for trying a nodepool "
                    "configuration, for tests and for benchmarks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="FILE",
                   help="YAML configuration (projects, users, limits, flavors, images, "
                        "networks, servers, faults); built-in defaults when omitted")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int,
                   help=f"TCP port; 0 picks a free one (default: the config's port, "
                        f"else {DEFAULT_PORT})")
    p.add_argument("--region", help="region name in the catalog (default RegionOne)")
    p.add_argument("--seed", type=int,
                   help="random seed for boot times, boot failures and fault rates")
    p.add_argument("--request-log", metavar="FILE",
                   help="append every OpenStack request as one JSON line to FILE")
    p.add_argument("--transition-log", metavar="FILE",
                   help="append every server transition (active, error, gone) as one "
                        "JSON line to FILE")
    g = p.add_argument_group("servers")
    g.add_argument("--boot-seconds", type=_seconds, metavar="S|LOW,HIGH",
                   help="time from BUILD to ACTIVE (or ERROR)")
    g.add_argument("--delete-seconds", type=_seconds, metavar="S|LOW,HIGH",
                   help="time a deleted server stays listed with task_state 'deleting'")
    g.add_argument("--error-boot-share", type=float, metavar="F",
                   help="share (0-1) of boots that end in ERROR with a fault")
    g.add_argument("--ports-per-server", type=int, metavar="N",
                   help="neutron ports per server (at least one per requested network)")
    g.add_argument("--floating-ip", action="store_true", default=None,
                   help="give each server a floating IP when it becomes ACTIVE")
    g.add_argument("--network-layout", choices=("private", "provider"),
                   help="private (default): servers get a private network and need "
                        "floating IPs; provider: their first port is on the external "
                        "network")
    g.add_argument("--leak-port-share", type=float, metavar="F",
                   help="share (0-1) of deleted servers whose ports stay behind DOWN "
                        "(a neutron port leak, for port-cleanup-interval)")
    g.add_argument("--limit", type=_limit, action="append", metavar="KEY=N", default=[],
                   help="quota limit for every project, repeatable; KEY is one of "
                        + ", ".join(LIMIT_KEYS) + "; -1 = unlimited")
    f = p.add_argument_group("faults")
    f.add_argument("--latency", type=_seconds, metavar="S|LOW,HIGH",
                   help="extra latency of every OpenStack request")
    f.add_argument("--error-500-rate", type=float, metavar="F",
                   help="share (0-1) of requests answered with HTTP 500")
    f.add_argument("--error-503-rate", type=float, metavar="F",
                   help="share (0-1) of requests answered with HTTP 503")
    f.add_argument("--error-429-rate", type=float, metavar="F",
                   help="share (0-1) of requests answered with HTTP 429 and Retry-After")
    f.add_argument("--retry-after", type=float, metavar="S",
                   help="Retry-After seconds of a 429 (default 1)")
    f.add_argument("--capacity", type=int, metavar="N",
                   help="concurrent requests served at full speed; beyond it answers "
                        "slow down, and beyond twice it they fail with 503 (default 0: "
                        "unlimited)")
    f.add_argument("--hang", action="store_true", default=None,
                   help="hang mode: requests block until released (POST "
                        "/_fakecloud/release) or for --hang-seconds")
    f.add_argument("--hang-seconds", type=float, metavar="S",
                   help="how long a request hangs in hang mode (default: until released)")
    f.add_argument("--slow-create-seconds", type=float, metavar="S",
                   help="POST /servers records the server, then waits S seconds before "
                        "answering (a client timeout with the server created anyway)")
    f.add_argument("--fault-match", metavar="REGEX",
                   help="apply latency, errors and hangs only to routes matching REGEX, "
                        "searched in 'METHOD /route/template', e.g. "
                        "'^GET /compute/v2.1/servers/detail$'")
    o = p.add_argument_group("output")
    o.add_argument("--write-clouds-yaml", metavar="PATH",
                   help="write a clouds.yaml for this cloud (first project and user) once "
                        "listening; it meets the launcher's clouds.yaml policy")
    o.add_argument("--cloud-name", default="fakecloud",
                   help="cloud name in the written clouds.yaml (default fakecloud)")
    o.add_argument("--api-timeout", type=float, default=30.0, metavar="S",
                   help="api_timeout in the written clouds.yaml (default 30)")
    o.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit without serving")
    o.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    top: dict[str, Any] = {}
    for attr, key in (("host", "host"), ("region", "region"), ("seed", "seed"),
                      ("request_log", "request_log"),
                      ("transition_log", "transition_log")):
        if getattr(args, attr) is not None:
            top[key] = getattr(args, attr)
    servers = {k: v for k, v in (
        ("boot_seconds", args.boot_seconds), ("delete_seconds", args.delete_seconds),
        ("error_boot_share", args.error_boot_share),
        ("ports_per_server", args.ports_per_server), ("floating_ip", args.floating_ip),
        ("leak_port_share", args.leak_port_share), ("network_layout", args.network_layout))
        if v is not None}
    faults = {k: v for k, v in (
        ("latency_seconds", args.latency), ("error_500_rate", args.error_500_rate),
        ("error_503_rate", args.error_503_rate), ("hang", args.hang),
        ("error_429_rate", args.error_429_rate), ("retry_after_seconds", args.retry_after),
        ("capacity", args.capacity),
        ("hang_seconds", args.hang_seconds), ("slow_create_seconds", args.slow_create_seconds),
        ("match", args.fault_match)) if v is not None}
    if servers:
        top["servers"] = servers
    if faults:
        top["faults"] = faults
    return top


def _merged(config_path: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if config_path:
        load_config(config_path)  # reports file problems with the file's name
        with open(config_path) as fh:
            data = yaml.safe_load(fh) or {}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:
        logging.getLogger("nodepool.fakecloud").setLevel(logging.DEBUG)
    source = args.config or "<defaults>"
    try:
        data = _merged(args.config, _overrides(args))
        config = config_from_dict(data, source + " (with command-line options)"
                                  if _overrides(args) else source)
    except FakeCloudConfigError as e:
        for problem in e.problems:
            print(f"nodepool-fakecloud: {problem}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{source}: OK ({len(config.projects)} project(s), {len(config.flavors)} "
              f"flavor(s), {len(config.images)} image(s), {len(config.networks)} network(s))")
        return 0
    port = args.port if args.port is not None else \
        (config.port if config.port is not None else DEFAULT_PORT)
    cloud = FakeCloud(config, port=port)
    if args.limit:
        try:
            cloud.set_limits(None, **dict(args.limit))
        except FakeCloudConfigError as e:
            for problem in e.problems:
                print(f"nodepool-fakecloud: --limit: {problem}", file=sys.stderr)
            return 2
    try:
        cloud.start()
    except OSError as e:
        print(f"nodepool-fakecloud: cannot listen on {cloud.host}:{port}: "
              f"{e.strerror or e}; choose another --port (0 picks a free one)",
              file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.write_clouds_yaml:
            cloud.write_clouds_yaml(args.write_clouds_yaml, cloud_name=args.cloud_name,
                                    api_timeout=args.api_timeout)
        print(f"READY url={cloud.url} auth_url={cloud.auth_url} admin_url={cloud.admin_url}",
              flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run a standalone ZooKeeper from Debian's ``zookeeper`` package.

Used by the test harness, ``.ci/run`` and the quick start.  Standard library
only, so it runs before the project is installed.

    python3 tools/zookeeper.py start [--dir D] [--port P] [--tls] [--tls-port P]
    python3 tools/zookeeper.py stop  [--dir D]
    python3 tools/zookeeper.py status [--dir D]
    python3 tools/zookeeper.py install

``start`` installs the package when it is missing, writes ``zoo.cfg`` into the
state directory, starts the server in the background and returns only once it
really answers (``srvr`` on the plain port says "Mode: standalone" and, with
``--tls``, a TLS handshake with the client certificate succeeds).  Starting a
server that already runs, or stopping one that does not, is not an error.

In TLS mode the server keeps its plain port for the four-letter-word probes
(kazoo cannot send them over TLS) and adds a secure port that requires a
client certificate signed by a throw-away CA kept in ``<dir>/tls``.

The last line of ``start`` is ``KEY=value`` pairs for a shell to eval:
``NODEPOOL_ZK_HOSTS``, and with TLS ``NODEPOOL_ZK_TLS_HOSTS``,
``NODEPOOL_ZK_TLS_CA``, ``NODEPOOL_ZK_TLS_CERT`` and ``NODEPOOL_ZK_TLS_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

JAVA_DIR = "/usr/share/java"
# zookeeper.jar's manifest lacks the netty codec and resolver jars that the
# Netty connection factory (needed for TLS) loads; without them every TLS
# handshake fails.  slf4j-simple gives us a log at all.
CLASSPATH_JARS = [
    "zookeeper.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-unix-common.jar",
    "slf4j-simple.jar",
]
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "nodepool-zk")
START_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"zookeeper: {msg}", file=sys.stderr, flush=True)


def ensure_installed() -> None:
    if os.path.exists(os.path.join(JAVA_DIR, "zookeeper.jar")) and shutil.which("java"):
        return
    if os.geteuid() != 0:
        sys.exit("zookeeper: Debian's 'zookeeper' package is missing; run "
                 "'apt-get install zookeeper' as root")
    log("installing Debian's zookeeper package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "zookeeper"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def four_letter(port: int, word: str, timeout: float = 2.0) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def tls_handshake_ok(port: int, tls_dir: str) -> bool:
    ctx = ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.pem"))
    ctx.load_cert_chain(os.path.join(tls_dir, "client.pem"),
                        os.path.join(tls_dir, "client.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except (OSError, ssl.SSLError):
        return False


def make_certs(tls_dir: str) -> None:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert."""
    if os.path.exists(os.path.join(tls_dir, "client.key")):
        return
    os.makedirs(tls_dir, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tls_dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=nodepool-test-ca")
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        with open(os.path.join(tls_dir, f"{name}.ext"), "w") as f:
            f.write(ext)
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN=nodepool-test-{name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
             "-CAkey", "ca.key", "-CAcreateserial", "-days", "3650",
             "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    # ZooKeeper's PEM key store wants the key and the certificate in one file.
    with open(os.path.join(tls_dir, "server-keystore.pem"), "w") as out:
        for part in ("server.key", "server.pem"):
            with open(os.path.join(tls_dir, part)) as f:
                out.write(f.read())


def state_path(d: str) -> str:
    return os.path.join(d, "state.json")


def read_state(d: str) -> dict | None:
    try:
        with open(state_path(d)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check /proc for it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def env_lines(st: dict) -> str:
    out = {"NODEPOOL_ZK_HOSTS": f"127.0.0.1:{st['port']}"}
    if st.get("tls_port"):
        tls = st["tls_dir"]
        out.update({
            "NODEPOOL_ZK_TLS_HOSTS": f"127.0.0.1:{st['tls_port']}",
            "NODEPOOL_ZK_TLS_CA": os.path.join(tls, "ca.pem"),
            "NODEPOOL_ZK_TLS_CERT": os.path.join(tls, "client.pem"),
            "NODEPOOL_ZK_TLS_KEY": os.path.join(tls, "client.key"),
        })
    return " ".join(f"{k}={v}" for k, v in out.items())


def serving(st: dict) -> bool:
    if not pid_alive(st["pid"]):
        return False
    if "Mode: standalone" not in four_letter(st["port"], "srvr"):
        return False
    if st.get("tls_port"):
        return tls_handshake_ok(st["tls_port"], st["tls_dir"])
    return True


def start(d: str, port: int | None, tls: bool, tls_port: int | None) -> dict:
    d = os.path.abspath(d)
    st = read_state(d)
    if st and serving(st) and (not tls or st.get("tls_port")):
        log(f"already running (pid {st['pid']})")
        return st
    if st and pid_alive(st["pid"]):
        stop(d)
    ensure_installed()
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    port = port or free_port()
    cfg = [
        "tickTime=2000",
        f"dataDir={os.path.join(d, 'data')}",
        f"clientPort={port}",
        "clientPortAddress=127.0.0.1",
        # Otherwise Jetty's AdminServer binds 0.0.0.0:8080.
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,envi,cons",
        "maxClientCnxns=0",
        "minSessionTimeout=1000",
    ]
    tls_dir = os.path.join(d, "tls")
    if tls:
        make_certs(tls_dir)
        tls_port = tls_port or free_port()
        cfg += [
            f"secureClientPort={tls_port}",
            "secureClientPortAddress=127.0.0.1",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"ssl.keyStore.location={os.path.join(tls_dir, 'server-keystore.pem')}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={os.path.join(tls_dir, 'ca.pem')}",
            "ssl.trustStore.type=PEM",
            "ssl.clientAuth=need",
        ]
    cfg_path = os.path.join(d, "zoo.cfg")
    with open(cfg_path, "w") as f:
        f.write("\n".join(cfg) + "\n")
    cp = ":".join(os.path.join(JAVA_DIR, j) for j in CLASSPATH_JARS)
    cmd = ["java", "-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.forceSync=no",
           "-cp", cp, "org.apache.zookeeper.server.ZooKeeperServerMain", cfg_path]
    logf = open(os.path.join(d, "zookeeper.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    st = {"pid": proc.pid, "port": port, "tls_port": tls_port if tls else None,
          "tls_dir": tls_dir, "dir": d}
    with open(state_path(d), "w") as f:
        json.dump(st, f)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ZooKeeper exited with {proc.returncode}; "
                               f"see {os.path.join(d, 'zookeeper.log')}")
        if serving(st):
            log(f"serving on 127.0.0.1:{port}"
                + (f", TLS on 127.0.0.1:{tls_port}" if tls else "")
                + f" (pid {proc.pid})")
            return st
        time.sleep(0.1)
    stop(d)
    raise RuntimeError(f"ZooKeeper did not serve within {START_TIMEOUT:.0f}s; "
                       f"see {os.path.join(d, 'zookeeper.log')}")


def stop(d: str) -> None:
    d = os.path.abspath(d)
    st = read_state(d)
    if not st or not pid_alive(st["pid"]):
        log("not running")
        return
    os.kill(st["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(st["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(st["pid"]):
        os.kill(st["pid"], signal.SIGKILL)
    log(f"stopped (pid {st['pid']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop", "status", "install"])
    p.add_argument("--dir", default=os.environ.get("NODEPOOL_ZK_DIR", DEFAULT_DIR),
                   help="state directory (config, data, log, certificates); "
                        f"default {DEFAULT_DIR}")
    p.add_argument("--port", type=int, help="plain client port (default: a free one)")
    p.add_argument("--tls", action="store_true",
                   help="also serve TLS with a required client certificate")
    p.add_argument("--tls-port", type=int, help="TLS client port (default: a free one)")
    args = p.parse_args(argv)
    if args.action == "install":
        ensure_installed()
        return 0
    if args.action == "stop":
        stop(args.dir)
        return 0
    if args.action == "status":
        st = read_state(os.path.abspath(args.dir))
        if st and serving(st):
            print(env_lines(st))
            return 0
        log("not running")
        return 1
    try:
        st = start(args.dir, args.port, args.tls, args.tls_port)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        log(str(e))
        return 1
    print(env_lines(st))
    return 0


if __name__ == "__main__":
    sys.exit(main())

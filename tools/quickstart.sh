#!/bin/bash
# Quick start: ZooKeeper, the simulated cloud and the launcher on this machine,
# with the example configuration in etc/.
#
#   tools/quickstart.sh [start]   set up, start what is not running, wait for the
#                                 min-ready nodes and show them
#   tools/quickstart.sh status    show what runs
#   tools/quickstart.sh stop      stop the launcher (SIGTERM, graceful), the cloud
#                                 and ZooKeeper
#
# start is idempotent: what already runs is kept, nothing is started twice.
# On a fresh Debian 12 machine it needs root once, to install Debian's
# zookeeper (and python3-venv when missing).
#
# Environment (defaults in brackets):
#   NODEPOOL_QUICKSTART_DIR           state directory: logs, pid files, generated
#                                     configuration, ZooKeeper's data [.quickstart]
#   NODEPOOL_QUICKSTART_ZK_PORT       ZooKeeper client port [2181]
#   NODEPOOL_QUICKSTART_CLOUD_PORT    nodepool-fakecloud port [8789]
#   NODEPOOL_QUICKSTART_WEBAPP_PORT   the launcher's status API port [8005]
#   NODEPOOL_QUICKSTART_TIMEOUT       seconds to wait for the min-ready nodes [300]
#   NODEPOOL_QUICKSTART_FAKECLOUD_ARGS  extra nodepool-fakecloud options, for
#                                     example "--boot-seconds 1,2"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=$(realpath -m "${NODEPOOL_QUICKSTART_DIR:-$ROOT/.quickstart}")
ZK_PORT=${NODEPOOL_QUICKSTART_ZK_PORT:-2181}
CLOUD_PORT=${NODEPOOL_QUICKSTART_CLOUD_PORT:-8789}
WEBAPP_PORT=${NODEPOOL_QUICKSTART_WEBAPP_PORT:-8005}
TIMEOUT=${NODEPOOL_QUICKSTART_TIMEOUT:-300}
FAKECLOUD_ARGS=${NODEPOOL_QUICKSTART_FAKECLOUD_ARGS:-}
VENV=$ROOT/.venv
CONFIG=$STATE/nodepool.yaml
CLOUDS=$STATE/clouds.yaml
# Longer than the launcher's own graceful stop (30 s) so it can finish it.
LAUNCHER_STOP_TIMEOUT=45

say() { echo "quickstart: $*"; }
die() { echo "quickstart: $*" >&2; exit 1; }

# -- processes ----------------------------------------------------------------------

# pid_of PIDFILE PROGRAM: print the pid if that process runs and is PROGRAM.
pid_of() {
    local pid
    [ -r "$1" ] || return 1
    pid=$(head -n1 "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    # A zombie still has a /proc entry; it does not run.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
    echo "$pid"
}

# spawn PIDFILE LOG MODE CMD...: run CMD in its own session (so a Ctrl-C in this
# terminal does not reach it), output to LOG (MODE a: append, w: truncate).
spawn() {
    python3 - "$@" <<'EOF'
import subprocess
import sys

pidfile, log, mode, *cmd = sys.argv[1:]
with open(log, mode + "b") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
with open(pidfile, "w") as f:
    f.write(f"{proc.pid}\n")
EOF
}

# stop_process NAME PIDFILE PROGRAM TIMEOUT: SIGTERM, wait, SIGKILL as a last resort.
stop_process() {
    local name=$1 pidfile=$2 program=$3 timeout=$4 pid waited=0
    if ! pid=$(pid_of "$pidfile" "$program"); then
        say "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while pid_of "$pidfile" "$program" >/dev/null; do
        if [ "$waited" -ge $((timeout * 10)) ]; then
            say "$name: still running ${timeout}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$pidfile"
    say "$name: stopped (pid $pid)"
}

zk_pid() {
    python3 - "$STATE/zookeeper/state.json" <<'EOF' 2>/dev/null
import json, sys
print(json.load(open(sys.argv[1]))["pid"])
EOF
}

# -- setup --------------------------------------------------------------------------

# True when .venv has this checkout installed (editable) with every dependency
# and program that setup.cfg asks for; then pip has nothing to do.
venv_current() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" -I - "$ROOT" <<'EOF' >/dev/null 2>&1
import configparser
import importlib.metadata as md
import json
import os
import sys

from pip._vendor.packaging.requirements import Requirement

root = sys.argv[1]
dist = md.distribution("nodepool")
direct = json.loads(dist.read_text("direct_url.json") or "{}")
assert direct.get("dir_info", {}).get("editable"), "not an editable install"
assert os.path.realpath(direct["url"].removeprefix("file://")) == os.path.realpath(root)
cfg = configparser.ConfigParser()
cfg.read(os.path.join(root, "setup.cfg"))
for line in cfg["options"]["install_requires"].splitlines():
    if line.strip():
        req = Requirement(line.strip())
        assert req.specifier.contains(md.version(req.name), prereleases=True), req
for line in cfg["options.entry_points"]["console_scripts"].splitlines():
    if "=" in line:
        script = line.split("=")[0].strip()
        assert os.path.exists(os.path.join(sys.prefix, "bin", script)), script
EOF
}

apt_install() {
    [ "$(id -u)" = 0 ] || die "Debian packages missing: $*; run this once as root"
    say "installing Debian's $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

setup() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    if ! command -v java >/dev/null || [ ! -e /usr/share/java/zookeeper.jar ]; then
        missing+=(zookeeper)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    python3 tools/zookeeper.py install
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    if ! venv_current; then
        say "installing the project into $VENV (pip install -e .)"
        mkdir -p "$STATE"
        if ! "$VENV/bin/python" -m pip install -q -e . >"$STATE/pip.log" 2>&1; then
            cat "$STATE/pip.log" >&2
            die "pip install -e . failed (output above, also in $STATE/pip.log)"
        fi
    fi
}

# The example configuration with this run's ports.  etc/nodepool.yaml stays the
# documented example; only the ports differ.  Rewritten only when it changes.
write_config() {
    local zk_port=$1 tmp
    tmp=$(mktemp "$STATE/nodepool.yaml.XXXXXX")
    "$VENV/bin/python" - etc/nodepool.yaml "$tmp" "$zk_port" "$WEBAPP_PORT" <<'EOF'
import sys

import yaml

src, dst, zk_port, webapp_port = sys.argv[1:]
with open(src) as f:
    data = yaml.safe_load(f)
for server in data["zookeeper-servers"]:
    server["port"] = int(zk_port)
data.setdefault("webapp", {})["port"] = int(webapp_port)
with open(dst, "w") as f:
    f.write(f"# Written by tools/quickstart.sh from {src} with this run's ports.\n")
    yaml.safe_dump(data, f, sort_keys=False)
EOF
    if cmp -s "$tmp" "$CONFIG"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$CONFIG"
    fi
}

# The simulated cloud keeps nothing across restarts, so neither may ZooKeeper:
# remove the quick start's chroot (nodes of servers that no longer exist).
reset_zookeeper_data() {
    "$VENV/bin/python" - "$CONFIG" <<'EOF'
import sys

from nodepool.config import validate
from nodepool.driver import registry
from nodepool.zk.client import connect, disconnect

config, problems = validate(sys.argv[1], check_clouds=False, drivers=registry.drivers())
if config is None:
    sys.exit("\n".join(str(p) for p in problems))
root = config.zookeeper.chroot
client = connect(config.zookeeper.with_chroot(""), ensure_chroot=False)
try:
    if root and client.exists(root):
        client.delete(root, recursive=True)
finally:
    disconnect(client)
EOF
}

start_fakecloud() {
    local pid deadline
    # shellcheck disable=SC2086  # FAKECLOUD_ARGS is a list of options
    spawn "$STATE/fakecloud.pid" "$STATE/fakecloud.log" w \
        "$VENV/bin/nodepool-fakecloud" --config etc/fakecloud.yaml --port "$CLOUD_PORT" \
        --write-clouds-yaml "$CLOUDS" $FAKECLOUD_ARGS
    deadline=$((SECONDS + 30))
    until grep -q '^READY ' "$STATE/fakecloud.log" 2>/dev/null; do
        if ! pid=$(pid_of "$STATE/fakecloud.pid" nodepool-fakecloud); then
            cat "$STATE/fakecloud.log" >&2
            die "nodepool-fakecloud exited; see $STATE/fakecloud.log"
        fi
        [ $SECONDS -lt $deadline ] || die "nodepool-fakecloud did not start within 30s; see $STATE/fakecloud.log"
        sleep 0.1
    done
    say "fakecloud: $(grep '^READY ' "$STATE/fakecloud.log" | head -n1 | cut -d' ' -f2) (pid $(cat "$STATE/fakecloud.pid"))"
}

# Exit 0 when every label has its min-ready nodes ready; prints the count.
min_ready_reached() {
    "$VENV/bin/python" - "$CONFIG" <<'EOF'
import sys

from nodepool.config import validate
from nodepool.driver import registry
from nodepool.zk.client import ZooKeeperUnavailable, connect, disconnect
from nodepool.zk.store import ZooKeeperStore

config, _ = validate(sys.argv[1], check_clouds=False, drivers=registry.drivers())
wanted = {name: label.min_ready for name, label in config.labels.items() if label.min_ready}
try:
    client = connect(config.zookeeper, connect_timeout=5)
except ZooKeeperUnavailable as e:
    print(e)
    sys.exit(2)
try:
    nodes = ZooKeeperStore(client).list_nodes()
finally:
    disconnect(client)
ready = {name: min(n, sum(1 for node in nodes if node.state == "ready"
                          and name in (node.type or [])))
         for name, n in wanted.items()}
print(f"{sum(ready.values())} of {sum(wanted.values())} min-ready nodes ready "
      f"({len(nodes)} node(s) in ZooKeeper)")
sys.exit(0 if ready == wanted else 1)
EOF
}

cmd_start() {
    local zk_env zk_port pid deadline progress last=""
    setup
    mkdir -p "$STATE"
    zk_env=$(python3 tools/zookeeper.py start --dir "$STATE/zookeeper" --port "$ZK_PORT")
    zk_port=${zk_env##*:}
    if [ "$zk_port" != "$ZK_PORT" ]; then
        say "ZooKeeper already runs on port $zk_port (not $ZK_PORT); using it"
    fi
    write_config "$zk_port"
    # The examples in etc/ must stay valid: check them as the README shows.
    "$VENV/bin/nodepool" config-validate -c etc/nodepool.yaml --clouds etc/clouds.yaml >/dev/null

    if pid=$(pid_of "$STATE/fakecloud.pid" nodepool-fakecloud); then
        say "fakecloud: already running (pid $pid)"
    else
        if pid=$(pid_of "$STATE/launcher.pid" nodepool-launcher); then
            say "the simulated cloud is gone: restarting the launcher with a clean slate"
            stop_process launcher "$STATE/launcher.pid" nodepool-launcher "$LAUNCHER_STOP_TIMEOUT"
        fi
        start_fakecloud
        reset_zookeeper_data
    fi

    if pid=$(pid_of "$STATE/launcher.pid" nodepool-launcher); then
        say "launcher: already running (pid $pid)"
    else
        "$VENV/bin/nodepool" config-validate -c "$CONFIG" --clouds "$CLOUDS" >/dev/null
        spawn "$STATE/launcher.pid" "$STATE/launcher.log" a \
            "$VENV/bin/nodepool-launcher" -f -c "$CONFIG" --clouds "$CLOUDS"
        say "launcher: started (pid $(cat "$STATE/launcher.pid")), log $STATE/launcher.log"
    fi

    say "waiting up to ${TIMEOUT}s for the min-ready nodes"
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        if ! pid_of "$STATE/launcher.pid" nodepool-launcher >/dev/null; then
            tail -n 30 "$STATE/launcher.log" >&2
            die "nodepool-launcher exited; see $STATE/launcher.log"
        fi
        if progress=$(min_ready_reached); then
            say "$progress"
            break
        fi
        if [ "$progress" != "$last" ]; then
            say "$progress"
            last=$progress
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$STATE/launcher.log" >&2
            die "the min-ready nodes were not ready within ${TIMEOUT}s; see $STATE/launcher.log"
        fi
        sleep 1
    done
    "$VENV/bin/nodepool" -c "$CONFIG" list
    cat <<EOF

Everything runs.  Next:
  $VENV/bin/nodepool -c $CONFIG list
  $VENV/bin/python tools/request-node.py -c $CONFIG ubuntu-jammy
  $VENV/bin/nodepool -c $CONFIG quota
  curl -s http://127.0.0.1:$WEBAPP_PORT/node-list
  tools/quickstart.sh status
  tools/quickstart.sh stop
EOF
}

cmd_status() {
    local pid running=0 zk
    if zk=$(python3 tools/zookeeper.py status --dir "$STATE/zookeeper" 2>/dev/null); then
        echo "zookeeper  running  pid $(zk_pid)  ${zk#NODEPOOL_ZK_HOSTS=}"
        running=$((running + 1))
    else
        echo "zookeeper  stopped"
    fi
    if pid=$(pid_of "$STATE/fakecloud.pid" nodepool-fakecloud); then
        echo "fakecloud  running  pid $pid  $(grep -m1 '^READY ' "$STATE/fakecloud.log" | cut -d' ' -f2)"
        running=$((running + 1))
    else
        echo "fakecloud  stopped"
    fi
    if pid=$(pid_of "$STATE/launcher.pid" nodepool-launcher); then
        echo "launcher   running  pid $pid  log $STATE/launcher.log"
        running=$((running + 1))
    else
        echo "launcher   stopped"
    fi
    if [ -n "${zk:-}" ] && [ -f "$CONFIG" ]; then
        "$VENV/bin/nodepool" -c "$CONFIG" list || true
    fi
    # Like an init script: 0 when everything runs, 3 otherwise.
    [ "$running" = 3 ] || return 3
}

cmd_stop() {
    stop_process launcher "$STATE/launcher.pid" nodepool-launcher "$LAUNCHER_STOP_TIMEOUT"
    stop_process fakecloud "$STATE/fakecloud.pid" nodepool-fakecloud 10
    python3 tools/zookeeper.py stop --dir "$STATE/zookeeper"
}

case "${1:-start}" in
    start) cmd_start ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    *) die "usage: tools/quickstart.sh [start|status|stop]" ;;
esac

#!/bin/bash
# Quick start: ZooKeeper, the project in .venv, and the example configuration.
#   tools/quickstart.sh         set up, start ZooKeeper, validate etc/ config
#   tools/quickstart.sh stop    stop what it started
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${NODEPOOL_QUICKSTART_DIR:-$PWD/.quickstart}
ZK_PORT=${NODEPOOL_QUICKSTART_ZK_PORT:-2181}

if [ "${1:-}" = stop ]; then
    python3 tools/zookeeper.py stop --dir "$STATE/zookeeper"
    exit 0
fi

if ! command -v java >/dev/null || [ ! -e /usr/share/java/zookeeper.jar ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
fi
python3 tools/zookeeper.py install
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .

python3 tools/zookeeper.py start --dir "$STATE/zookeeper" --port "$ZK_PORT"
.venv/bin/nodepool config-validate -c etc/nodepool.yaml --clouds etc/clouds.yaml
echo "ZooKeeper runs on 127.0.0.1:$ZK_PORT; stop it with: tools/quickstart.sh stop"

#!/bin/bash
# Set up everything the test suite needs on a fresh Debian 12 machine, then
# run it.  Idempotent: a second run reuses the venv and the installed packages.
#   tools/run-tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Debian's ZooKeeper (and a JDK through it); the tests start their own server.
"$PYTHON" tools/zookeeper.py install

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
if [ -x tools/install-zuul-client.sh ]; then
    # Zuul's own client classes drive the wire-compatibility tests.
    tools/install-zuul-client.sh "$VENV/bin/python"
fi

exec "$VENV/bin/python" -m pytest "$@"

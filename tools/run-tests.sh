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

# Upstream Nodepool 11 in a venv of its own (.upstream-venv): the tests that
# compare with upstream or run its nodepool-builder beside this launcher.
if [ -z "${NODEPOOL_UPSTREAM_VENV:-}" ]; then
    tools/install-upstream.sh
fi

# Test files run in parallel (pytest-xdist; a file's tests stay together on
# one worker, as they share fixtures).  Most tests wait on simulated boots
# and deletes rather than compute, so three workers suit two cores.
# NODEPOOL_TEST_WORKERS=0 runs them in this process.
exec "$VENV/bin/python" -m pytest -n "${NODEPOOL_TEST_WORKERS:-3}" --dist loadfile "$@"

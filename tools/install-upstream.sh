#!/bin/sh
# Install upstream Nodepool 11 from PyPI into a venv of its own, for the
# benchmark's reference column (tools/benchmark.py --launcher upstream|both)
# and for the tests that run upstream's programs (its nodepool-builder beside
# our launcher: tests/test_builder_e2e.py; tools/run-tests.sh runs this first).
#
#   tools/install-upstream.sh [VENV_DIR]     (default: .upstream-venv, git-ignored)
#
# Nothing of upstream is part of this repository: the venv is made on the
# machine that runs the benchmark, from PyPI, with pip's ordinary resolver
# (upstream's full requirement set, so its launcher runs as released).
# Idempotent: when the venv already has nodepool 11.0.0 and its launcher
# imports, nothing is downloaded.
set -eu

NODEPOOL_VERSION=11.0.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.upstream-venv}
PYTHON=${PYTHON:-python3}

probe() {
    # -I: not the checkout in the current directory (also called nodepool).
    "$VENV/bin/python" -I - <<EOF 2>/dev/null
import importlib.metadata as md
assert md.version("nodepool") == "$NODEPOOL_VERSION"
import nodepool.cmd.launcher, nodepool.cmd.builder, nodepool.driver.openstack  # noqa: F401
EOF
}

if [ -x "$VENV/bin/python" ] && probe && [ -x "$VENV/bin/nodepool-launcher" ] \
        && [ -x "$VENV/bin/nodepool-builder" ]; then
    echo "upstream nodepool $NODEPOOL_VERSION already installed in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# cachetools: upstream's OpenStack driver imports it without declaring it
# (it used to arrive through google-auth, whose current releases dropped it).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nodepool==$NODEPOOL_VERSION" cachetools

if ! probe; then
    echo "$0: installed, but upstream's launcher does not import:" >&2
    "$VENV/bin/python" -I -c "import nodepool.cmd.launcher, nodepool.driver.openstack" >&2 || true
    exit 1
fi
echo "upstream nodepool $NODEPOOL_VERSION installed in $VENV"
echo "launcher: $VENV/bin/nodepool-launcher"

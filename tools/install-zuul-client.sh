#!/bin/sh
# Install Zuul's own ZooKeeper client classes into a venv, for the
# wire-compatibility tests (tests/test_request_zuul_e2e.py).
#
#   tools/install-zuul-client.sh VENV_PYTHON
#
# Zuul itself is installed with --no-deps: its full requirement set (web
# server, database drivers, Ansible ...) is not needed to import
# zuul.zk.nodepool, and pulls far too much.  The list below is what that
# import needs (see doc/protocol.rst, "Zuul's client as a test client"); pip then
# warns that Zuul's other requirements are missing, which is harmless here.
#
# Idempotent: when zuul 14.3.0 is already there and importable, nothing is
# downloaded; otherwise pip installs only what is missing.
set -eu

ZUUL_VERSION=14.3.0
EXTRAS="kazoo voluptuous google-re2 jsonpath-rw cachetools PyYAML cryptography
opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc
opentelemetry-exporter-otlp-proto-http mmh3"

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_PYTHON  (e.g. .venv/bin/python)" >&2
    exit 2
fi
PY=$1
if ! "$PY" -c 'import sys' 2>/dev/null; then
    echo "$0: $PY is not a working Python interpreter" >&2
    exit 2
fi

probe() {
    "$PY" - <<EOF 2>/dev/null
import importlib.metadata as md
assert md.version("zuul") == "$ZUUL_VERSION"
import zuul.zk.nodepool, zuul.lib.tracing, zuul.model  # noqa: F401
# The configuration parsers tests/test_migrate_zuul.py checks its output
# with; beyond the list below they need openstacksdk and statsd, which this
# project requires (run-tests.sh installs it first).
import zuul.configloader, zuul.driver.openstack  # noqa: F401
EOF
}

if probe; then
    echo "zuul $ZUUL_VERSION client already importable with $PY"
    exit 0
fi

"$PY" -m pip install --quiet --disable-pip-version-check --no-deps "zuul==$ZUUL_VERSION"
# shellcheck disable=SC2086  # word splitting of the package list is wanted
"$PY" -m pip install --quiet --disable-pip-version-check $EXTRAS

if ! probe; then
    echo "$0: installed, but 'import zuul.zk.nodepool' still fails:" >&2
    "$PY" -c 'import zuul.zk.nodepool' >&2 || true
    exit 1
fi
echo "zuul $ZUUL_VERSION client installed for $PY"

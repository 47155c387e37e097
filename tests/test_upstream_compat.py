"""Drop-in compatibility: records written byte for byte as upstream Nodepool 11
and Zuul 14 write them (tests/data), read back through ``nodepool`` (the
CLI, a real process) and the status API (real HTTP): upstream's table
headers, upstream's JSON keys under ``Accept: application/json``, upstream's
headers and conditional answers."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.launcher.launcher import Launcher
from nodepool.launcher.webapp import StatusServer

DATA = os.path.join(os.path.dirname(__file__), "data")
BIN = os.path.dirname(sys.executable)

# Upstream Nodepool 11.0.0's headers (nodepool/status.py), in its order.
LIST_HEADERS = ["ID", "Provider", "Label", "Server ID", "Public IPv4", "IPv6", "State",
                "Age", "Locked"]
DETAIL_HEADERS = LIST_HEADERS + ["Pool", "Hostname", "Private IPv4", "AZ", "Username",
                                 "Port", "Launcher", "Allocated To", "Hold Job", "Comment",
                                 "User Data", "Driver Data"]
REQUEST_HEADERS = ["Request ID", "Priority", "State", "Requestor", "Node Types", "Nodes",
                   "Declined By", "Event ID"]
# ... and its JSON keys.
NODE_KEYS = {"id", "provider", "label", "server_id", "public_ipv4", "ipv6", "state", "age",
             "locked", "pool", "hostname", "private_ipv4", "AZ", "username",
             "connection_port", "launcher", "allocated_to", "hold_job", "comment",
             "user_data", "driver_data"}
REQUEST_KEYS = {"id", "relative_priority", "state", "requestor", "node_types", "nodes",
                "declined_by", "event_id"}


def raw(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


@pytest.fixture
def upstream_records(zk):
    """Two nodes, two requests and a pool registration as upstream writes them."""
    zk.create("/nodepool/nodes/0000000042", raw("nodepool11_node_ready.json"), makepath=True)
    zk.create("/nodepool/nodes/0000000050", raw("nodepool11_node_k8s.json"), makepath=True)
    zk.create("/nodepool/requests/100-0000000005", raw("nodepool11_request_fulfilled.json"),
              makepath=True)
    zk.create("/nodepool/requests/200-0000000006", raw("zuul14_request_new.json"),
              makepath=True)
    zk.create("/nodepool/components/pool/np1.example.org0000000000",
              raw("nodepool11_pool_component.json"), makepath=True, ephemeral=True)
    return zk


def write_config(tmp_path, zk_settings, port: int = 0) -> str:
    server = zk_settings.servers[0]
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump({
        "zookeeper-servers": [{"host": server.host, "port": server.port,
                               "chroot": zk_settings.chroot}],
        "webapp": {"port": port}, "labels": [], "providers": []}))
    return str(path)


def cli(config: str, *args: str) -> str:
    out = subprocess.run([f"{BIN}/nodepool", "-c", config, *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a prettytable."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[1:]


def test_cli_tables_have_upstreams_headers_on_upstream_records(tmp_path, zk_settings,
                                                               upstream_records):
    config = write_config(tmp_path, zk_settings)
    headers, rows = table(cli(config, "list"))
    assert headers == LIST_HEADERS
    assert rows[0][:7] == ["0000000042", "cloud-a", "ubuntu-jammy",
                           "6a1f0c5e-2d7b-4a8e-9c3f-0b1d2e3f4a5b", "203.0.113.10",
                           "2001:db8::10", "ready"]
    assert rows[0][8] == "unlocked"

    headers, rows = table(cli(config, "list", "--detail"))
    assert headers == DETAIL_HEADERS
    detail = dict(zip(headers, rows[0], strict=True))
    assert detail["AZ"] == "nova" and detail["Port"] == "22"
    assert detail["Driver Data"] == "{'opaque': [1, 2, 3]}" and detail["User Data"] == ""
    # A port carrying connection details (kubernetes) is not printed.
    assert dict(zip(headers, rows[1], strict=True))["Port"] == "redacted"

    headers, rows = table(cli(config, "request-list"))
    assert headers == REQUEST_HEADERS
    fulfilled = next(r for r in rows if r[0] == "100-0000000005")
    assert fulfilled[4:6] == ["ubuntu-jammy,ubuntu-noble", "0000000042,0000000043"]

    headers, rows = table(cli(config, "label-list"))
    assert headers == ["Label"] and rows == [["ubuntu-jammy"], ["ubuntu-noble"]]

    # --json has the status API's keys.
    nodes = json.loads(cli(config, "list", "--json"))
    assert [set(n) for n in nodes] == [NODE_KEYS, NODE_KEYS]
    assert nodes[0]["label"] == ["ubuntu-jammy"]
    assert {r["id"]: set(r) for r in json.loads(cli(config, "request-list", "--json"))} == \
        {"100-0000000005": REQUEST_KEYS, "200-0000000006": REQUEST_KEYS}


def http(port: int, path: str, method: str = "GET", **headers: str):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def status_api(tmp_path, zk_settings, upstream_records):
    config, _ = load_config(write_config(tmp_path, zk_settings), drivers=registry.drivers())
    launcher = Launcher(config)
    launcher.start()
    try:
        yield launcher.webapp.port
    finally:
        launcher.stop(wait=10)


JSON = {"Accept": "application/json"}


def test_status_api_json_has_upstreams_keys_under_accept_json(status_api):
    port = status_api
    status, headers, body = http(port, "/node-list", **JSON)
    assert status == 200 and headers["Content-Type"] == "application/json"
    nodes = {n["id"]: n for n in json.loads(body)}
    assert set(nodes) == {"0000000042", "0000000050"}
    node = nodes["0000000042"]
    assert set(node) == NODE_KEYS
    assert node["server_id"] == "6a1f0c5e-2d7b-4a8e-9c3f-0b1d2e3f4a5b"
    assert node["ipv6"] == "2001:db8::10" and node["AZ"] == "nova"
    assert node["label"] == ["ubuntu-jammy"] and node["connection_port"] == 22
    assert node["driver_data"] == {"opaque": [1, 2, 3]} and node["locked"] == "unlocked"
    assert nodes["0000000050"]["connection_port"] == "redacted"

    status, _, body = http(port, "/node-list?node_id=0000000042", **JSON)
    assert [n["id"] for n in json.loads(body)] == ["0000000042"]
    # ?fields= narrows the table; JSON keeps every key, as upstream's.
    status, _, body = http(port, "/node-list?fields=id,state&node_id=0000000042", **JSON)
    assert set(json.loads(body)[0]) == NODE_KEYS
    status, headers, body = http(port, "/node-list?fields=state,id")
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert table(body.decode()) == (["ID", "State"], [["0000000042", "ready"],
                                                      ["0000000050", "ready"]])
    status, _, body = http(port, "/node-list")
    assert table(body.decode())[0] == DETAIL_HEADERS
    # A browser's Accept prefers HTML: the table.
    status, _, body = http(port, "/node-list",
                           Accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert body.startswith(b"+")

    status, _, body = http(port, "/request-list", **JSON)
    assert {r["id"]: set(r) for r in json.loads(body)} == \
        {"100-0000000005": REQUEST_KEYS, "200-0000000006": REQUEST_KEYS}
    assert table(http(port, "/request-list")[2].decode())[0] == REQUEST_HEADERS
    status, _, body = http(port, "/label-list", **JSON)
    assert json.loads(body) == [{"label": "ubuntu-jammy"}, {"label": "ubuntu-noble"}]
    # The .json paths (this project's) answer the same JSON whatever Accept says.
    assert json.loads(http(port, "/label-list.json")[2]) == json.loads(body)

    # No images here: empty, not 404.
    for path, first in (("/image-list", "Build ID"), ("/dib-image-list", "ID"),
                        ("/image-status", "Image")):
        status, _, body = http(port, path, **JSON)
        assert (status, json.loads(body)) == (200, [])
        status, _, body = http(port, path)
        assert status == 200 and table(body.decode())[0][0] == first


def test_status_api_headers_conditional_requests_and_head(status_api):
    port = status_api
    status, headers, body = http(port, "/ready")
    assert (status, body) == (200, b"OK")
    status, headers, body = http(port, "/label-list", **JSON)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cache-Control"] == "max-age=1, public"
    modified = email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp()
    expires = email.utils.parsedate_to_datetime(headers["Expires"]).timestamp()
    assert expires == modified + 1
    # Not modified since a time at or after Last-Modified: 304 without a body.
    future = email.utils.formatdate(modified + 3600, usegmt=True)
    status, headers, body = http(port, "/label-list", **JSON, **{"If-Modified-Since": future})
    assert (status, body) == (304, b"") and "Content-Type" not in headers
    past = "Sat, 01 Jan 2000 00:00:00 GMT"
    status, _, body = http(port, "/label-list", **JSON, **{"If-Modified-Since": past})
    assert status == 200 and json.loads(body)
    # HEAD: the GET's headers, no body.
    status, headers, body = http(port, "/label-list", "HEAD", **JSON)
    full = http(port, "/label-list", **JSON)[2]
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) == len(full)
    # Byte ranges as upstream's framework serves them.
    status, headers, body = http(port, "/label-list", **JSON, Range="bytes=0-1")
    assert (status, body) == (206, full[:2])
    assert headers["Content-Range"] == f"bytes 0-1/{len(full)}"
    status, _, _ = http(port, "/label-list", **JSON, Range=f"bytes={len(full) + 10}-")
    assert status == 416
    status, _, _ = http(port, "/nothing-here")
    assert status == 404


def test_ready_is_503_until_the_launcher_serves(tmp_path, zk_settings):
    config, _ = load_config(write_config(tmp_path, zk_settings), drivers=registry.drivers())
    launcher = Launcher(config)  # not started
    server = StatusServer(launcher, "127.0.0.1", 0)
    server.start()
    try:
        status, _, body = http(server.port, "/ready")
        assert status == 503 and b"OK" not in body
    finally:
        server.stop()



DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "doc")


def documented(page: str, prefix: str) -> list[str]:
    """The commands of ``page``'s literal blocks that start with ``prefix``."""
    with open(os.path.join(DOC, page)) as f:
        return [line.strip() for line in f if line.startswith(f"    {prefix}")]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_the_documented_status_api_commands_work(status_api):
    commands = documented("operations.rst", "curl ")
    assert len(commands) >= 3
    for command in commands:
        assert "http://127.0.0.1:8005/" in command
        out = subprocess.run(command.replace(":8005/", f":{status_api}/"), shell=True,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout, (command, out.stderr)
        if "Accept: application/json" in command and "/node-list" in command:
            assert {frozenset(n) for n in json.loads(out.stdout)} == {frozenset(NODE_KEYS)}


def test_the_documented_listen_address_change_binds_all_interfaces(tmp_path, zk_settings):
    # The default keeps the status API local ...
    config, _ = load_config(write_config(tmp_path, zk_settings), drivers=registry.drivers())
    data = yaml.safe_load(open(config.config_file))
    del data["webapp"]
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(data))
    default, _ = load_config(str(path), drivers=registry.drivers())
    assert (default.webapp.listen_address, default.webapp.port) == ("127.0.0.1", 8005)
    # ... and the migration page's one line gives upstream's.
    with open(os.path.join(DOC, "migration.rst")) as f:
        assert "``webapp: {listen_address: 0.0.0.0}``" in f.read()
    data["webapp"] = yaml.safe_load("{listen_address: 0.0.0.0}")
    path.write_text(yaml.safe_dump(data))
    changed, _ = load_config(str(path), drivers=registry.drivers())
    assert changed.webapp.listen_address == "0.0.0.0"


@pytest.mark.parametrize("accept, json_wanted", [
    (None, False), ("*/*", False), ("application/json", True),
    ("application/json, text/plain", False),          # a tie: upstream's first offer
    ("text/plain;q=0.5, application/json", True),
    ("application/*", True), ("text/*;q=0.9, */*;q=0.1", False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
])
def test_content_negotiation_prefers_upstreams_first_offer_on_ties(accept, json_wanted):
    from nodepool.launcher.webapp import wants_json
    assert wants_json(accept) is json_wanted


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-1", (0, 2)), ("bytes=5-", (5, 10)), ("bytes=-3", (7, 10)),
    ("bytes=8-100", (8, 10)), ("bytes=10-", False), ("bytes=0-1,4-5", None),
    ("bytes=4-2", None), ("items=0-1", None),
])
def test_byte_ranges_of_a_ten_byte_answer(header, expected):
    from nodepool.launcher.webapp import byte_range
    assert byte_range(header, 10) == expected

"""The image commands against real ZooKeeper holding image znodes as upstream's
nodepool-builder 11 writes them: upstream's tables and JSON keys, and the
znodes the write commands leave for the builder (upstream's paths and JSON).
When upstream is installed, its own ``nodepool`` CLI prints the same tables
from the same ZooKeeper data, our writes included."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from nodepool.cmd import nodepoolcmd
from tests.fixtures.images import write_build, write_upload
from tests.fixtures.upstream import upstream_bin

IMAGES = "/nodepool/images"
BUILD_A = "e6aab36839be42b0b1286aabbdc5f6e5"
BUILD_B = "fe5deb88608e438cb66ed1308cc85f67"
# What upstream's builder wrote for a build of fake-image (captured from a run).
UPSTREAM_BUILD = (b'{"state": "ready", "state_time": 1796580811.81, "builder": "localhost", '
                  b'"builder_id": "845f6456-27bb-4094-9e17-119a09352343", "formats": "qcow2", '
                  b'"username": "zuul", "python_path": "auto", "shell_type": null}')
UPSTREAM_UPLOAD = (b'{"state": "ready", "state_time": 1796580821.83, "external_id": '
                   b'"628a0914-67cf-490b-923a-5f2b165edd2c", "external_name": '
                   b'"fake-image-1796580821", "format": "qcow2", "username": "zuul", '
                   b'"python_path": "auto", "shell_type": null}')


def write_config(tmp_path, settings, diskimages=("fake-image", "other")) -> str:
    server = settings.servers[0]
    data: dict = {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                         "chroot": settings.chroot}],
                  "labels": [], "providers": [],
                  "diskimages": [{"name": n, "pause": n == "other"} for n in diskimages]}
    if settings.tls is not None:
        data["zookeeper-tls"] = {"ca": settings.tls.ca, "cert": settings.tls.cert,
                                 "key": settings.tls.key}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def write_builder_records(zk):
    """Two builds of fake-image (one with the builder's captured JSON), a
    build in progress of another image, and uploads in each state."""
    zk.create(f"{IMAGES}/fake-image/builds/{BUILD_A}", UPSTREAM_BUILD, makepath=True)
    zk.create(f"{IMAGES}/fake-image/builds/{BUILD_A}/providers/region1/images/0000000001",
              UPSTREAM_UPLOAD, makepath=True)
    write_build(zk, "fake-image", BUILD_B, state_time=time.time() - 60)
    write_upload(zk, "fake-image", BUILD_B, "region1", external_id="img-b",
                 external_name="fake-image-b")
    write_upload(zk, "fake-image", BUILD_B, "region2", state="uploading", external_id=None)
    write_build(zk, "third", "0123abcd", state="building", formats="")
    return zk


@pytest.fixture
def builder_records(zk):
    return write_builder_records(zk)


def run(capsys, config: str, *args: str) -> tuple[int, str, str]:
    code = nodepoolcmd.main(["-c", config, *args])
    out, err = capsys.readouterr()
    return code, out, err


def table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[1:]


AGE = re.compile(r"^\d\d:\d\d:\d\d:\d\d$")


def test_image_views_have_upstreams_columns_and_keys(tmp_path, zk_settings, builder_records,
                                                     capsys):
    config = write_config(tmp_path, zk_settings)
    code, out, _ = run(capsys, config, "image-list")
    headers, rows = table(out)
    assert code == 0 and headers == ["Build ID", "Upload ID", "Provider", "Image",
                                     "Provider Image Name", "Provider Image ID", "State", "Age"]
    assert [r[:7] for r in rows] == [
        [BUILD_A, "0000000001", "region1", "fake-image", "fake-image-1796580821",
         "628a0914-67cf-490b-923a-5f2b165edd2c", "ready"],
        [BUILD_B, "0000000000", "region1", "fake-image", "fake-image-b", "img-b", "ready"],
        [BUILD_B, "0000000000", "region2", "fake-image", "", "", "uploading"]]
    assert all(AGE.match(r[7]) for r in rows)

    code, out, _ = run(capsys, config, "dib-image-list")
    headers, rows = table(out)
    assert headers == ["ID", "Image", "Builder", "Formats", "State", "Age"]
    assert [r[:5] for r in rows] == [
        [f"fake-image-{BUILD_A}", "fake-image", "localhost", "qcow2", "ready"],
        [f"fake-image-{BUILD_B}", "fake-image", "builder01.example.org", "qcow2", "ready"],
        ["third-0123abcd", "third", "builder01.example.org", "", "building"]]

    # JSON: upstream's keys, ages as epoch seconds (int(state_time)), formats a list.
    code, out, _ = run(capsys, config, "image-list", "--json")
    uploads = json.loads(out)
    assert set(uploads[0]) == {"id", "upload_id", "provider", "image", "external_name",
                               "external_id", "state", "age"}
    assert uploads[0]["age"] == 1796580821
    code, out, _ = run(capsys, config, "dib-image-list", "--json")
    builds = json.loads(out)
    assert builds[0] == {"id": f"fake-image-{BUILD_A}", "image": "fake-image",
                         "builder": "localhost", "formats": ["qcow2"], "state": "ready",
                         "age": 1796580811}
    assert builds[2]["formats"] == []

    code, out, _ = run(capsys, config, "image-status", "--json")
    assert json.loads(out) == [
        {"image": "fake-image", "paused": False, "build_request": None,
         "build_request_age": None},
        {"image": "third", "paused": False, "build_request": None, "build_request_age": None}]


def test_write_commands_leave_what_the_builder_reads(tmp_path, zk_settings, builder_records,
                                                     capsys):
    zk = builder_records
    config = write_config(tmp_path, zk_settings)

    # image-build: an empty request-build znode, shown as pending.
    assert run(capsys, config, "image-build", "fake-image")[0] == 0
    assert zk.get(f"{IMAGES}/fake-image/request-build")[0] == b""
    _, out, _ = run(capsys, config, "image-status")
    headers, rows = table(out)
    assert headers == ["Image", "Paused", "Build Request", "Build Request Age"]
    assert rows[0][:3] == ["fake-image", "False", "pending"] and AGE.match(rows[0][3])
    # The builder takes the request: it holds the image's build lock; until
    # it creates the build the request is still pending (upstream's rule).
    zk.create(f"{IMAGES}/fake-image/builds/lock/x-lock-0000000000", ephemeral=True,
              makepath=True)
    _, out, _ = run(capsys, config, "image-status", "--json")
    assert json.loads(out)[0]["build_request"] == "pending"
    write_build(zk, "fake-image", "0000feed", state="building")
    _, out, _ = run(capsys, config, "image-status", "--json")
    assert json.loads(out)[0]["build_request"] == "building"
    zk.delete(f"{IMAGES}/fake-image/builds/0000feed")

    # Upstream's refusals: not a diskimage of nodepool.yaml, or paused there.
    code, _, err = run(capsys, config, "image-build", "nope")
    assert code == 1 and "Trying to build a non disk-image-builder image: nope" in err
    code, _, err = run(capsys, config, "image-build", "other")
    assert code == 1 and "Skipping build request for image other; paused" in err
    assert not zk.exists(f"{IMAGES}/nope") and not zk.exists(f"{IMAGES}/other")

    # image-pause / image-unpause: the pause znode; builds show "paused".
    assert run(capsys, config, "image-pause", "fake-image")[0] == 0
    assert zk.exists(f"{IMAGES}/fake-image/pause")
    _, out, _ = run(capsys, config, "dib-image-list", "--json")
    assert [b["state"] for b in json.loads(out)] == ["paused", "paused", "building"]
    assert run(capsys, config, "image-unpause", "fake-image")[0] == 0
    assert not zk.exists(f"{IMAGES}/fake-image/pause")

    # image-delete: the upload's state becomes deleting, the rest as it was.
    upload = f"{IMAGES}/fake-image/builds/{BUILD_A}/providers/region1/images/0000000001"
    before = time.time()
    code, _, _ = run(capsys, config, "image-delete", "--provider", "region1", "--image",
                     "fake-image", "--build-id", BUILD_A, "--upload-id", "0000000001")
    assert code == 0
    written = json.loads(zk.get(upload)[0])
    original = json.loads(UPSTREAM_UPLOAD)
    assert written.pop("state") == "deleting" and written.pop("state_time") >= before
    assert written == {k: v for k, v in original.items() if k not in ("state", "state_time")}
    code, _, err = run(capsys, config, "image-delete", "--provider", "region2", "--image",
                       "fake-image", "--build-id", BUILD_B, "--upload-id", "0000000000")
    assert code == 1 and "Cannot delete because image upload in progress" in err
    code, _, err = run(capsys, config, "image-delete", "--provider", "region1", "--image",
                       "fake-image", "--build-id", "nope", "--upload-id", "0000000001")
    assert code == 1 and "Image upload not found" in err

    # dib-image-delete <image>-<build>: the build's state becomes deleting.
    assert run(capsys, config, "dib-image-delete", f"fake-image-{BUILD_B}")[0] == 0
    build = json.loads(zk.get(f"{IMAGES}/fake-image/builds/{BUILD_B}")[0])
    assert build["state"] == "deleting" and build["formats"] == "qcow2"
    assert set(build) == {"state", "state_time", "builder", "builder_id", "formats",
                          "username", "python_path", "shell_type"}
    code, _, err = run(capsys, config, "dib-image-delete", "third-0123abcd")
    assert code == 1 and "Cannot delete a build in progress" in err
    code, _, err = run(capsys, config, "dib-image-delete", "fake-image-0000")
    assert code == 1 and "Build fake-image-0000 not found" in err
    code, _, err = run(capsys, config, "dib-image-delete", "nodash")
    assert code == 1 and "not a dib image id" in err


def test_upstreams_cli_prints_the_same_image_tables(tmp_path, zk_tls_settings, capsys):
    """Our writes, then upstream's ``nodepool`` (which needs TLS) and ours on
    the same ZooKeeper: the same rows (ages aside, a second may pass)."""
    from nodepool.zk.client import connect, disconnect

    upstream = upstream_bin("nodepool")
    client = connect(zk_tls_settings)
    try:
        write_builder_records(client)
    finally:
        disconnect(client)
    config = write_config(tmp_path, zk_tls_settings)
    assert run(capsys, config, "image-build", "fake-image")[0] == 0
    assert run(capsys, config, "image-pause", "third")[0] == 0
    assert run(capsys, config, "dib-image-delete", f"fake-image-{BUILD_B}")[0] == 0
    for command in ("image-list", "dib-image-list", "image-status"):
        theirs = subprocess.run([upstream, "-c", config, command], capture_output=True,
                                text=True, timeout=60)
        assert theirs.returncode == 0, theirs.stderr[-2000:]
        ours = run(capsys, config, command)[1]
        their_headers, their_rows = table(theirs.stdout)
        our_headers, our_rows = table(ours)
        assert our_headers == their_headers and their_rows, command
        age_cols = [i for i, h in enumerate(our_headers) if h.endswith("Age")]

        def without_age(rows, age_cols=age_cols):
            return sorted([c for i, c in enumerate(r) if i not in age_cols] for r in rows)
        assert without_age(our_rows) == without_age(their_rows), command


def test_status_api_image_endpoints_answer_the_builders_records(tmp_path, zk_settings,
                                                                builder_records):
    from nodepool.config import load_config
    from nodepool.driver import registry
    from nodepool.launcher.launcher import Launcher
    from tests.test_upstream_compat import JSON, http

    zk = builder_records
    zk.create(f"{IMAGES}/third/pause", makepath=True)
    zk.create(f"{IMAGES}/fake-image/request-build", makepath=True)
    path = write_config(tmp_path, zk_settings)
    data = yaml.safe_load(open(path))
    data["webapp"] = {"port": 0}
    open(path, "w").write(yaml.safe_dump(data))
    config, _ = load_config(path, drivers=registry.drivers())
    launcher = Launcher(config)
    launcher.start()
    try:
        port = launcher.webapp.port
        status, headers, body = http(port, "/image-list", **JSON)
        assert status == 200 and headers["Content-Type"] == "application/json"
        uploads = json.loads(body)
        assert [(u["id"], u["provider"], u["state"]) for u in uploads] == [
            (BUILD_A, "region1", "ready"), (BUILD_B, "region1", "ready"),
            (BUILD_B, "region2", "uploading")]
        assert uploads[0] == {"id": BUILD_A, "upload_id": "0000000001",
                              "provider": "region1", "image": "fake-image",
                              "external_name": "fake-image-1796580821",
                              "external_id": "628a0914-67cf-490b-923a-5f2b165edd2c",
                              "state": "ready", "age": 1796580821}
        headers_, rows = table(http(port, "/dib-image-list")[2].decode())
        assert headers_ == ["ID", "Image", "Builder", "Formats", "State", "Age"]
        assert [r[4] for r in rows] == ["ready", "ready", "paused"]
        status, _, body = http(port, "/image-status.json")
        statuses = json.loads(body)
        assert [(s["image"], s["paused"], s["build_request"]) for s in statuses] == [
            ("fake-image", False, "pending"), ("third", True, None)]
        assert isinstance(statuses[0]["build_request_age"], int)
        headers_, rows = table(http(port, "/image-status?fields=image,paused")[2].decode())
        assert (headers_, rows) == (["Image", "Paused"], [["fake-image", "False"],
                                                          ["third", "True"]])
    finally:
        launcher.stop(wait=10)

"""Records against JSON exactly as Zuul 14.3.0 and upstream Nodepool 11 write
it (tests/data, see its README), without ZooKeeper."""

from __future__ import annotations

import copy
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodepool.zk.records import (MIN_READY_REQUESTOR, NODE_STATES,
                                 REQUEST_STATES, ZUUL_NODE_RESERVED_KEYS,
                                 LauncherComponent, MalformedRecord, Node,
                                 NodeRequest, PoolComponent, decode_json)

DATA = os.path.join(os.path.dirname(__file__), "data")

# The keys zuul.model.NodeRequest.fromDict/updateFromDict index directly.
ZUUL_REQUEST_KEYS = {"requestor_data", "requestor", "node_types", "provider", "state",
                     "state_time", "event_id"}
# What upstream Nodepool writes back for a request.
NODEPOOL_REQUEST_KEYS = {"state", "state_time", "declined_by", "node_types", "nodes", "reuse",
                         "requestor", "requestor_data", "provider", "relative_priority",
                         "event_id", "created_time", "tenant_name"}


def load(name: str):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def raw(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", ["nodepool11_request_fulfilled.json",
                                  "nodepool11_request_min_ready.json"])
def test_nodepool_request_round_trips_exactly(name):
    d = load(name)
    req = NodeRequest.from_dict(d, "200-0000000007")
    assert req.to_dict() == d
    assert set(req.to_dict()) == NODEPOOL_REQUEST_KEYS


def test_zuul_request_defaults_and_preserves_requestor_data():
    d = load("zuul14_request_new.json")
    original = copy.deepcopy(d)
    req = NodeRequest.from_dict(d, "200-0000000007")
    # Missing keys take upstream's defaults.
    assert (req.declined_by, req.nodes, req.reuse) == ([], [], True)
    assert req.priority == ("200", 0, "0000000007")
    out = req.to_dict()
    for key, value in original.items():
        assert out[key] == value, key
    # Opaque data, big integers of the trace ids included, untouched.
    assert out["requestor_data"] == original["requestor_data"]
    assert json.loads(json.dumps(out))["requestor_data"]["span_info"]["trace_id"] == \
        original["requestor_data"]["span_info"]["trace_id"]
    assert set(out) == NODEPOOL_REQUEST_KEYS
    assert d == original  # the input was not modified


def test_every_request_we_write_has_the_keys_zuul_indexes():
    for req in (NodeRequest(), NodeRequest(requestor=MIN_READY_REQUESTOR, reuse=False,
                                           node_types=["x"])):
        assert ZUUL_REQUEST_KEYS <= set(req.to_dict())


def test_unknown_request_keys_survive_a_rewrite():
    d = load("zuul14_request_new.json")
    d["future_key"] = {"a": [1, 2]}
    out = NodeRequest.from_dict(d, "100-0000000000").to_dict()
    assert out["future_key"] == {"a": [1, 2]}


@pytest.mark.parametrize("name", ["nodepool11_node_ready.json", "nodepool11_node_k8s.json",
                                  "zuul14_node_in_use.json"])
def test_node_round_trips_exactly(name):
    d = load(name)
    node = Node.from_dict(d, "0000000042")
    assert node.to_dict() == d


def test_node_as_zuul_left_it_keeps_zuul_fields():
    node = Node.from_dict(load("zuul14_node_in_use.json"), "0000000042")
    assert node.state == "in-use"
    assert node.user_data == {"zuul_system": "0a1b2c3d4e5f",
                              "project_name": "example.org/project"}
    assert node.extra == {"id": "0000000042"}
    assert node.attributes == {"executor-zone": "zone-a"}


def test_kubernetes_connection_port_is_kept_as_a_dict():
    node = Node.from_dict(load("nodepool11_node_k8s.json"), "0000000050")
    assert node.connection_port["namespace"] == "zuul-ci-abc"
    assert node.to_dict()["ssh_port"] == node.connection_port


def test_legacy_node_defaults():
    node = Node.from_dict(load("legacy_node_minimal.json"), "0000000001")
    assert node.type == ["centos-7"]            # a plain string becomes a list
    assert node.connection_port == 2022         # falls back to ssh_port
    assert node.username == "zuul"              # upstream's read default
    assert node.host_keys == []
    assert node.hold_expiration == 0            # unusable value: no expiration
    out = node.to_dict()
    assert out["type"] == ["centos-7"] and out["ssh_port"] == 2022


def test_node_never_writes_keys_that_clash_with_zuul_node_attributes():
    d = load("nodepool11_node_ready.json")
    d.update({"lock": "x", "label": "y", "name": "n", "_state": "s", "_keys": [],
              "stat": 1, "reuse": True, "harmless_new_key": 5})
    out = Node.from_dict(d, "0000000042").to_dict()
    assert not (set(out) & ZUUL_NODE_RESERVED_KEYS)
    assert not [k for k in out if k.startswith("_")]
    assert out["harmless_new_key"] == 5


def test_zuul_id_in_node_data_follows_the_znode_name():
    d = load("zuul14_node_in_use.json")
    assert Node.from_dict(d, "0000000099").to_dict()["id"] == "0000000099"


def test_pool_component_json_is_byte_identical():
    data = raw("nodepool11_pool_component.json").rstrip(b"\n")
    comp = PoolComponent.from_dict(json.loads(data), "/x")
    assert comp.to_json() == data
    assert comp.id.endswith("00112233445566778899aabbccddeeff")
    assert comp.supported_labels == ["ubuntu-jammy", "ubuntu-noble"]


def test_launcher_component_json_is_byte_identical():
    data = raw("nodepool11_launcher_component.json").rstrip(b"\n")
    assert LauncherComponent.from_dict(json.loads(data)).to_json() == data


def test_pool_component_defaults():
    comp = PoolComponent.from_dict({"hostname": "h", "id": "pool-1"})
    assert (comp.priority, comp.paused, comp.supported_labels) == (100, False, [])


@pytest.mark.parametrize("data, reason", [
    (b"", "empty znode"),
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"node_types": ["a"]}', "missing key 'state'"),
    (b'{"state": "exploded"}', "unknown state 'exploded'"),
    (b'{"state": "requested", "node_types": "ubuntu"}', "'node_types' must be a list"),
    (b'{"state": "requested", "declined_by": [1]}', "'declined_by' must be a list"),
    (b'{"state": "requested", "reuse": "yes"}', "'reuse' must be true or false"),
    (b'{"state": "requested", "relative_priority": "1"}', "'relative_priority'"),
])
def test_malformed_requests_name_the_path(data, reason):
    path = "/nodepool/requests/200-0000000001"
    with pytest.raises(MalformedRecord) as e:
        NodeRequest.from_json(data, "200-0000000001", path)
    assert path in str(e.value)
    assert reason in e.value.reason


def test_request_with_a_bad_name_is_malformed():
    with pytest.raises(MalformedRecord):
        NodeRequest.from_json(b'{"state": "requested"}', "not-an-id", "/nodepool/requests/x")


@pytest.mark.parametrize("d", [
    {"state": "ready", "type": [1]},
    {"state": "ready", "host_keys": "ssh-rsa AAA"},
    {"state": "bogus"},
    {"type": ["x"]},
    {"state": "ready", "allocated_to": 5},
])
def test_malformed_nodes(d):
    with pytest.raises(MalformedRecord):
        Node.from_dict(d, "0000000001", "/nodepool/nodes/0000000001")


def test_malformed_components():
    with pytest.raises(MalformedRecord):
        PoolComponent.from_dict({"hostname": "h"})           # no id
    with pytest.raises(MalformedRecord):
        PoolComponent.from_dict({"hostname": "h", "id": "x", "paused": "no"})
    with pytest.raises(MalformedRecord):
        LauncherComponent.from_dict({"state": "running"})    # no hostname
    with pytest.raises(MalformedRecord):
        decode_json("/p", b"null")


# -- properties ----------------------------------------------------------------------

_text = st.text(min_size=1, max_size=12)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), _text)
_json = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)), max_leaves=8)


@given(st.builds(
    NodeRequest,
    id=st.just("100-0000000001"),
    state=st.sampled_from(sorted(REQUEST_STATES)),
    state_time=st.one_of(st.none(), st.floats(0, 2e9)),
    node_types=st.lists(_text, max_size=4), nodes=st.lists(_text, max_size=4),
    declined_by=st.lists(_text, max_size=3), reuse=st.booleans(),
    requestor=st.one_of(st.none(), _text), requestor_data=_json,
    provider=st.one_of(st.none(), _text), relative_priority=st.integers(0, 1000),
    event_id=st.one_of(st.none(), _text), created_time=st.one_of(st.none(), st.floats(0, 2e9)),
    tenant_name=st.one_of(st.none(), _text), extra=st.just({})))
def test_request_round_trip_property(req):
    wire = json.loads(req.to_json())
    again = NodeRequest.from_dict(wire, req.id)
    assert again == req
    assert ZUUL_REQUEST_KEYS <= set(wire)


@given(st.builds(
    Node, id=st.just("0000000001"), state=st.sampled_from(sorted(NODE_STATES)),
    type=st.lists(_text, max_size=3), provider=st.one_of(st.none(), _text),
    allocated_to=st.one_of(st.none(), _text), connection_port=st.integers(1, 65535),
    username=st.one_of(st.just("zuul"), _text), host_keys=st.lists(_text, max_size=2),
    hold_expiration=st.one_of(st.none(), st.integers(0, 10**6)), user_data=_json,
    driver_data=_json, node_properties=st.one_of(st.none(), st.dictionaries(_text, _json_scalar)),
    extra=st.dictionaries(_text, _json_scalar, max_size=3)))
def test_node_round_trip_property(node):
    wire = json.loads(node.to_json())
    assert not (set(wire) & ZUUL_NODE_RESERVED_KEYS)
    again = Node.from_dict(wire, node.id)
    assert again.to_dict() == wire

"""Property: no document, however broken, gives anything but clean problems."""

from __future__ import annotations

import copy
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodepool.config import validate
from nodepool.driver import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_CLOUDS = os.path.join(ROOT, "etc", "clouds.yaml")
with open(os.path.join(ROOT, "etc", "nodepool.yaml")) as _f:
    EXAMPLE = yaml.safe_load(_f)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(EXAMPLE) if p]


def _assert_clean(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "nodepool.yaml"
    path.write_text(text)
    # must not raise
    config, problems = validate(str(path), EXAMPLE_CLOUDS, drivers=registry.drivers())
    for p in problems:
        assert str(p).startswith(str(path)) or str(p).startswith("warning: ") \
            or str(p).startswith(EXAMPLE_CLOUDS)
    if config is None:
        assert any(p.severity == "error" for p in problems)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ALL_PATHS), values)
def test_replacing_any_value_never_raises(tmp_path_factory, path, value):
    data = copy.deepcopy(EXAMPLE)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    _assert_clean(tmp_path_factory, yaml.safe_dump(data))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ALL_PATHS))
def test_removing_any_key_never_raises(tmp_path_factory, path):
    data = copy.deepcopy(EXAMPLE)
    node = data
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    _assert_clean(tmp_path_factory, yaml.safe_dump(data))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(tmp_path_factory, text):
    _assert_clean(tmp_path_factory, text)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2000), st.sampled_from(["", ":", "- ", "[", "{", "&a ", "*a", "\t",
                                             "!!python/object:os.system ''"]))
def test_corrupted_example_never_raises(tmp_path_factory, pos, junk):
    with open(os.path.join(ROOT, "etc", "nodepool.yaml")) as f:
        text = f.read()
    pos = pos % (len(text) + 1)
    _assert_clean(tmp_path_factory, text[:pos] + junk + text[pos:])

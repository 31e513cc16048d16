"""Samples come back nested as they were inserted: insert, insert_batch, the writer, checkpoints."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from launchpad import replay
from launchpad.replay import Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay import structure as structure_lib

TIMEOUT = 10.0  # bound on every wait

Transition = collections.namedtuple("Transition", ["obs", "action", "reward"])


@pytest.fixture
def client():
  """A client of a server with a Fifo queue "q" and a uniform table "u"."""
  tables = [
    Table.queue("q", 100),
    Table("u", sel.Uniform(seed=0), sel.Fifo(), 100, rl.MinSize(1)),
  ]
  with replay.Server(tables) as server:
    yield server.localhost_client(timeout=TIMEOUT)


def nested(i: int) -> dict:
  """A step of every kind of container: dict, namedtuple, list, tuple."""
  return {
    "t": Transition(
      obs={"pixels": np.full((2, 2), i, np.uint8), "pos": [np.float32(i), np.float32(-i)]},
      action=np.int64(i),
      reward=(np.float32(i / 2),),
    ),
    "done": np.bool_(i % 2),
  }


def assert_same(actual, expected) -> None:
  """Equal nesting (container types included) and equal leaves (values and dtypes)."""
  if isinstance(expected, dict | list | tuple):
    assert type(actual) is type(expected), (actual, expected)
  if isinstance(expected, dict):
    assert list(actual) == list(expected)
    for key in expected:
      assert_same(actual[key], expected[key])
  elif isinstance(expected, list | tuple):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
      assert_same(a, e)
  else:
    np.testing.assert_array_equal(actual, expected)
    assert np.asarray(actual).dtype == np.asarray(expected).dtype


def test_insert_and_sample_give_back_the_nesting(client):
  for i in range(3):
    client.insert(nested(i), {"q": 1.0})
  for i, sample in enumerate(client.sample("q", 3)):
    assert_same(sample.data, nested(i))
    assert type(sample.data["t"]) is Transition  # importable here: the class itself


def test_insert_batch_and_sample_batch_give_back_the_nesting_with_stacked_leaves(client):
  keys = client.insert_batch([nested(i) for i in range(4)], {"q": 1.0})
  batch = client.sample_batch("q", 4)
  np.testing.assert_array_equal(batch.info.key, np.array(keys, np.uint64))
  t = batch.data["t"]
  assert type(t) is Transition and isinstance(t.obs["pos"], list) and isinstance(t.reward, tuple)
  np.testing.assert_array_equal(t.obs["pixels"][:, 0, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(t.obs["pos"][1], [0, -1, -2, -3])
  np.testing.assert_array_equal(t.action, [0, 1, 2, 3])
  np.testing.assert_array_equal(t.reward[0], np.arange(4, dtype=np.float32) / 2)
  np.testing.assert_array_equal(batch.data["done"], [False, True, False, True])


def test_a_bare_array_and_a_flat_dict_come_back_as_they_went_in(client):
  client.insert(np.arange(3), {"q": 1.0})
  client.insert({"x": np.arange(2)}, {"q": 1.0})
  client.insert([np.int32(1), np.int32(2)], {"q": 1.0})
  bare, flat, pair = client.sample("q", 3)
  assert isinstance(bare.data, np.ndarray) and bare.data.tolist() == [0, 1, 2]
  assert list(flat.data) == ["x"] and flat.data["x"].tolist() == [0, 1]
  assert isinstance(pair.data, list) and [int(v) for v in pair.data] == [1, 2]


def test_a_batch_of_several_structures_keeps_each_items_own(client):
  items = [nested(0), {"other": np.zeros(2)}, (np.ones(1), np.ones(1)), nested(1)]
  client.insert_batch(items, {"q": 1.0})
  for item, sample in zip(items, client.sample("q", 4), strict=True):
    assert_same(sample.data, item)


def test_sample_batch_refuses_items_of_different_structures(client):
  # Same columns ("0", "1"), same dtypes and shapes; a list and a tuple.
  client.insert_batch([[np.ones(2), np.ones(2)], (np.ones(2), np.ones(2))], {"u": 1.0})
  with pytest.raises(ValueError, match="same structure"):
    for _ in range(50):  # the uniform draw may pick one structure only; it picks both soon
      client.sample_batch("u", 8)


def test_a_namedtuple_that_cannot_be_imported_comes_back_as_an_equivalent_one(client):
  Local = collections.namedtuple("Local", ["a", "b"])  # its qualname names no module attribute
  client.insert(Local(np.int8(1), np.int8(2)), {"q": 1.0})
  [sample] = client.sample("q")
  assert sample.data._fields == ("a", "b") and type(sample.data).__name__ == "Local"
  assert (int(sample.data.a), int(sample.data.b)) == (1, 2)


def test_writer_items_come_back_nested_in_sample_and_sample_batch(client):
  with client.trajectory_writer(num_keep_alive_refs=2) as writer:
    for i in range(4):
      writer.append({"obs": np.full(3, i, np.float32), "action": np.int64(i)})
      if i >= 1:
        writer.create_item(
          "q",
          1.0,
          Transition(
            obs={"pair": writer.history["obs"][-2:]},
            action=writer.history["action"][-1],
            reward=(writer.history["action"][-2],),
          ),
        )
  first = client.sample("q")[0].data
  assert type(first) is Transition and first.obs["pair"].shape == (2, 3)
  assert (int(first.action), int(first.reward[0])) == (1, 0)
  batch = client.sample_batch("q", 2).data
  assert type(batch) is Transition and batch.obs["pair"].shape == (2, 2, 3)
  np.testing.assert_array_equal(batch.action, [2, 3])
  np.testing.assert_array_equal(batch.reward[0], [1, 2])


def test_checkpoints_keep_the_nesting(tmp_path):
  with replay.Server([Table.queue("q", 10)], checkpoint_dir=str(tmp_path)) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    client.insert_batch([nested(0), nested(1)], {"q": 1.0})
    client.checkpoint()
  with replay.Server([Table.queue("q", 10)], checkpoint_dir=str(tmp_path)) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    for i, sample in enumerate(client.sample("q", 2)):
      assert_same(sample.data, nested(i))


def test_flatten_and_unflatten_are_inverse_and_name_columns_by_path():
  columns, structure = structure_lib.flatten(nested(3))
  assert list(columns) == [
    "t/obs/pixels",
    "t/obs/pos/0",
    "t/obs/pos/1",
    "t/action",
    "t/reward/0",
    "done",
  ]
  assert structure_lib.paths(structure) == list(columns)
  assert_same(structure_lib.unflatten(structure, columns), nested(3))


@pytest.mark.parametrize(
  ("data", "message"),
  [
    ({}, "empty mapping"),
    ({"a": []}, "empty sequence"),
    ({1: np.zeros(1)}, "keys must be strings"),
    ({"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}, "two leaves have the path 'a/b'"),
    ({"x": object()}, "dtype object"),
  ],
)
def test_flatten_refuses_what_cannot_come_back(data, message):
  with pytest.raises(ValueError, match=message):
    structure_lib.flatten(data)


@pytest.mark.parametrize(
  "structure",
  [
    "dict",
    ("dict", ("a",), (), ""),
    ("dict", ("a", "b"), ((),), ""),
    ("set", None, ((),), ""),
    ("dict", (1,), ((),), ""),
  ],
)
def test_malformed_structures_are_refused(structure):
  with pytest.raises(ValueError, match="malformed item structure"):
    structure_lib.paths(structure)


def test_the_server_refuses_a_structure_that_does_not_match_the_columns(client):
  courier = client._call(TIMEOUT)
  columns = {"a": np.zeros((1, 2))}
  with pytest.raises(ValueError, match="not the item's columns"):
    courier.insert([(("dict", ("b",), ((),), ""), columns, {"q": 1.0})], TIMEOUT)
  assert client.server_info()["q"]["size"] == 0

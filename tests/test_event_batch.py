"""RoutingEvent.from_lists: the same events as RoutingEvent(...) one at a time, the same errors, edge cases."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chronomoe import InvalidInputError, RoutingEvent
from chronomoe.event_batch import SCALARS

EQUIVALENCE = settings(max_examples=300, deadline=None)


def one_at_a_time(columns: dict, counts, sums=None) -> list[RoutingEvent]:
    """The reference: ``RoutingEvent(...)`` per event, shared values repeated (as ``from_lists`` documents)."""
    size = len(counts)

    def value(name, index):
        column = columns.get(name, "TRAIN" if name == "mode" else None)
        per_event = isinstance(column, (list, tuple)) or (isinstance(column, np.ndarray) and column.ndim)
        return column[index] if per_event else column

    return [
        RoutingEvent(
            **{name: value(name, index) for name in SCALARS if name in columns or name == "mode"},
            expert_token_counts=counts[index],
            router_prob_sums=None if sums is None else sums[index],
        )
        for index in range(size)
    ]


def outcome(build):
    """``("ok", [model_dump of each event], events)`` or ``("error", type, message)`` of ``build()``."""
    try:
        events = build()
    except (ValidationError, InvalidInputError) as error:
        return ("error", type(error), str(error))
    return ("ok", [event.model_dump() for event in events], events)


def assert_same(columns: dict, counts, sums=None) -> list[RoutingEvent] | None:
    """``from_lists`` and the one-at-a-time reference build equal events, or raise the same error."""
    expected = outcome(lambda: one_at_a_time(columns, counts, sums))
    got = outcome(lambda: RoutingEvent.from_lists(**columns, expert_token_counts=counts, router_prob_sums=sums))
    if expected[0] == "error":
        assert got[:3] == expected[:3], f"reference raised {expected[2]!r}, batch gave {got[:2]!r}"
        return None
    assert got[0] == "ok", f"batch raised {got[2]!r} where the reference built the events"
    assert got[1] == expected[1]
    assert got[2] == expected[2]
    for event in got[2]:
        assert not event.expert_token_counts.flags.writeable
        assert type(event.token_count) is int
    return got[2]


# -- strategies -----------------------------------------------------------------------------------
def shared_or_per_event(values: st.SearchStrategy, size: int) -> st.SearchStrategy:
    return values | st.lists(values, min_size=size, max_size=size)


valid_counts = st.integers(0, 40) | st.sampled_from([0, 1, 2**40, 2**62 // 8])
odd_counts = (
    st.integers(-3, -1)
    | st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64, 2**70])
    | st.booleans()
    | st.floats(0, 5, allow_nan=False)
    | st.just(math.nan)
    | st.sampled_from(["3", None, np.int64(4), np.int32(2), np.uint64(5), np.bool_(True), 1.0, [1]])
)


@st.composite
def valid_batches(draw):
    """Batches every event of which ``RoutingEvent(...)`` accepts, with plain values (the fast path)."""
    size = draw(st.integers(0, 6))
    width = draw(st.integers(1, 8))
    rows = draw(st.lists(st.lists(valid_counts, min_size=width, max_size=width), min_size=size, max_size=size))
    columns = {
        "run_id": draw(shared_or_per_event(st.sampled_from(["run", "other"]), size)),
        "step": draw(shared_or_per_event(st.integers(0, 2**40), size)),
        "layer_id": draw(shared_or_per_event(st.integers(0, 60), size)),
        "mode": draw(shared_or_per_event(st.sampled_from(["TRAIN", "INFER"]), size)),
        "n_experts": width,
        "top_k": draw(shared_or_per_event(st.integers(1, width), size)),
        "timestamp": draw(shared_or_per_event(st.floats(0, 2e9), size)),
        "loss": draw(shared_or_per_event(st.none() | st.floats(-10, 10), size)),
    }
    return columns, rows


@st.composite
def any_batches(draw):
    """Batches with a few odd values (wrong types, out of range, ragged), in random places."""
    columns, rows = draw(valid_batches())
    size = len(rows)
    width = columns["n_experts"]
    if rows and draw(st.booleans()):
        row = draw(st.integers(0, size - 1))
        position = draw(st.integers(0, width - 1))
        rows[row] = [*rows[row][:position], draw(odd_counts), *rows[row][position + 1 :]]
    if rows and draw(st.booleans()):
        rows[draw(st.integers(0, size - 1))] = draw(st.lists(valid_counts | st.booleans(), max_size=width + 1))
    if draw(st.booleans()):
        name = draw(st.sampled_from(["run_id", "step", "layer_id", "mode", "n_experts", "top_k", "timestamp", "loss"]))
        odd = draw(
            st.sampled_from(["", -1, 0, 1.5, True, "TRAIN", "eval", None, math.inf, 2**64, np.int64(3), 7.0, width + 1])
        )
        if size and draw(st.booleans()):
            column = columns[name] if isinstance(columns[name], list) else [columns[name]] * size
            columns[name] = [*column[:-1], odd]
        else:
            columns[name] = odd
    return columns, rows


# -- equivalence ----------------------------------------------------------------------------------
@EQUIVALENCE
@given(valid_batches())
def test_valid_batches_build_the_events_built_one_at_a_time(batch):
    columns, rows = batch
    assert assert_same(columns, rows) is not None


@EQUIVALENCE
@given(any_batches())
def test_any_batch_builds_or_rejects_as_building_its_events_one_at_a_time_does(batch):
    columns, rows = batch
    assert_same(columns, rows)


@EQUIVALENCE
@given(valid_batches())
def test_counts_as_an_integer_array_or_as_array_rows_build_the_same_events(batch):
    columns, rows = batch
    if rows:
        assert_same(columns, np.array(rows, dtype=np.int64))
        assert_same(columns, [np.array(row, dtype=np.int32 if max(row) < 2**31 else np.int64) for row in rows])


def test_an_error_names_the_field_and_value_and_the_event_in_the_batch(assert_rejected):
    rows = [[3, 1], [2, -5], [1, -7]]
    error = assert_rejected(
        lambda: RoutingEvent.from_lists(
            run_id="r", step=1, layer_id=[0, 1, 2], n_experts=2, top_k=1, expert_token_counts=rows
        ),
        "expert_token_counts",
        "-5",
    )
    assert isinstance(error, ValidationError)
    if sys.version_info >= (3, 11):
        assert error.__notes__ == ["in event 1 of the batch given to RoutingEvent.from_lists"]


def test_a_per_event_argument_of_another_length_is_rejected_naming_it(assert_rejected):
    error = assert_rejected(
        lambda: RoutingEvent.from_lists(
            run_id="r", step=1, layer_id=[0, 1, 2], n_experts=2, top_k=1, expert_token_counts=[[1, 2], [3, 4]]
        ),
        "layer_id=[0, 1, 2]",
        "3 values",
    )
    assert isinstance(error, InvalidInputError) and error.field == "layer_id"


@pytest.mark.parametrize("counts", [5, "12", {0: [1, 2]}, None])
def test_counts_that_are_no_sequence_of_rows_are_rejected(assert_rejected, counts):
    assert_rejected(
        lambda: RoutingEvent.from_lists(
            run_id="r", step=1, layer_id=0, n_experts=2, top_k=1, expert_token_counts=counts
        ),
        "expert_token_counts",
    )


# -- edge cases -----------------------------------------------------------------------------------
def test_an_empty_batch_is_no_events():
    assert RoutingEvent.from_lists(run_id="r", step=1, layer_id=0, n_experts=4, top_k=1, expert_token_counts=[]) == []
    assert RoutingEvent.from_lists(run_id="r", step=[], layer_id=[], n_experts=4, top_k=1, expert_token_counts=[]) == []


def test_zero_counts_give_no_active_experts_and_no_tokens():
    columns = {"run_id": "r", "step": 1, "layer_id": [0, 1, 2], "n_experts": 3, "top_k": 1, "timestamp": 1.0}
    events = assert_same(columns, [[0, 0, 0], [0, 5, 0], [7, 0, 9]])
    assert [event.active_experts for event in events] == [(), (1,), (0, 2)]
    assert [event.token_count for event in events] == [0, 5, 16]


@pytest.mark.parametrize(
    "count", [2**62 // 2 - 1, 2**62 // 2, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**80], ids=str
)
def test_large_counts_are_taken_or_rejected_as_one_at_a_time(count):
    columns = {"run_id": "r", "step": 1, "layer_id": [0, 1], "n_experts": 2, "top_k": 1, "timestamp": 1.0}
    assert_same(columns, [[count, 1], [3, 4]])
    assert_same(columns, [[count, count], [3, 4]])


def test_rows_of_bools_are_rejected_and_bools_among_integers_taken_as_one_at_a_time():
    columns = {"run_id": "r", "step": 1, "layer_id": [0, 1], "n_experts": 3, "top_k": 1, "timestamp": 1.0}
    assert assert_same(columns, [[True, 5, 0], [3, 4, 2]]) is not None
    assert assert_same(columns, [[True, True, False], [3, 4, 2]]) is None  # rejected


def test_router_prob_sums_are_per_event_and_validated():
    columns = {"run_id": "r", "step": 1, "layer_id": [0, 1], "n_experts": 2, "top_k": 1, "timestamp": 1.0}
    events = assert_same(columns, [[1, 2], [3, 4]], sums=[[0.5, 0.5], None])
    assert events[0].router_prob_sums.tolist() == [0.5, 0.5] and events[1].router_prob_sums is None
    assert assert_same(columns, [[1, 2], [3, 4]], sums=[[0.5], None]) is None  # wrong length: rejected
    with pytest.raises(InvalidInputError, match="router_prob_sums"):
        RoutingEvent.from_lists(**columns, expert_token_counts=[[1, 2], [3, 4]], router_prob_sums=0.5)


def test_the_default_timestamp_is_now_and_shared_by_the_batch():
    events = RoutingEvent.from_lists(
        run_id="r", step=1, layer_id=[0, 1], n_experts=1, top_k=1, expert_token_counts=[[2], [3]]
    )
    assert events[0].timestamp == events[1].timestamp and events[0].timestamp > 1.7e9


def test_later_changes_to_the_callers_array_do_not_reach_the_events():
    counts = np.array([[3, 1], [2, 2]])
    events = RoutingEvent.from_lists(
        run_id="r", step=1, layer_id=[0, 1], n_experts=2, top_k=1, expert_token_counts=counts
    )
    counts[0, 0] = 99
    assert events[0].expert_token_counts.tolist() == [3, 1]


def test_integer_objects_numpy_does_not_know_are_read_as_their_integers():
    """The documented difference: RoutingEvent(...) rejects such a list (numpy makes an object array of it)."""

    class Index:
        def __init__(self, value: int) -> None:
            self.value = value

        def __index__(self) -> int:
            return self.value

    rows = [[Index(3), Index(4)], [5, 6]]
    events = RoutingEvent.from_lists(
        run_id="r", step=1, layer_id=[0, 1], n_experts=2, top_k=1, expert_token_counts=rows
    )
    assert events[0].expert_token_counts.tolist() == [3, 4] and events[0].token_count == 7
    with pytest.raises(ValidationError, match="dtype object"):
        RoutingEvent(run_id="r", step=1, layer_id=0, n_experts=2, top_k=1, expert_token_counts=rows[0])

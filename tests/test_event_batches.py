"""Reading an events file in batches with the counts parsed on a worker thread (``background_parse``): the same
batches as parsing them in line, an error reading ahead after every batch before it, the worker ended with the
iteration."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import CorruptRecordError, RoutingEvent
from chronomoe.io.event_lines import EventBatch, event_batches, read_batch
from chronomoe.io.serialize import event_line


def canonical_line(step: int, layer: int, counts: list[int]) -> bytes:
    event = RoutingEvent(
        run_id="run", step=step, layer_id=layer, n_experts=len(counts), top_k=1, expert_token_counts=counts
    )
    return event_line(event)


MUTATIONS = {
    "leading zero": lambda counts: b"0" + counts,
    "digit doubled": lambda counts: counts[:1] + counts,
    "comma dropped": lambda counts: counts.replace(b",", b"", 1),
    "comma doubled": lambda counts: counts.replace(b",", b",,", 1),
    "sign": lambda counts: b"-" + counts,
    "space": lambda counts: b" " + counts,
}


@st.composite
def event_files(draw) -> bytes:
    """Lines of two widths, some with their counts' bytes changed (:data:`MUTATIONS`), and maybe a torn last
    line."""
    lines = []
    for step in range(draw(st.integers(1, 12))):
        width = draw(st.sampled_from([3, 5]))
        counts = draw(st.lists(st.integers(0, 10**6), min_size=width, max_size=width))
        line = canonical_line(step, step % 2, counts)
        mutation = draw(st.sampled_from([None, None, None, *MUTATIONS]))
        if mutation is not None:
            text = b",".join(b"%d" % count for count in counts)
            key = b'"expert_token_counts":['
            line = line.replace(key + text + b"]", key + MUTATIONS[mutation](text) + b"]", 1)
        lines.append(line)
    if draw(st.booleans()):
        lines.append(lines[-1][: len(lines[-1]) // 2])  # torn: no newline
    return b"".join(lines)


def as_compared(batch: EventBatch) -> tuple:
    return (
        batch.line_numbers,
        batch.lines,
        batch.unaccepted,
        [(rows.indices, rows.columns, rows.counts.tolist()) for rows in batch.rows],
    )


@settings(max_examples=150, deadline=None)
@given(event_files(), st.integers(1, 5))
def test_batches_parsed_on_a_worker_thread_are_those_parsed_in_line(tmp_path_factory, content, batch_lines):
    path = tmp_path_factory.mktemp("events") / "routing_events.jsonl"
    path.write_bytes(content)
    in_line = [as_compared(batch) for batch in event_batches(path, batch_lines, background_parse=False)]
    behind = [as_compared(batch) for batch in event_batches(path, batch_lines, background_parse=True)]
    assert behind == in_line


@pytest.mark.parametrize("background_parse", [False, True])
def test_an_overlong_line_raises_after_every_batch_before_it(tmp_path, background_parse):
    path = tmp_path / "routing_events.jsonl"
    lines = [canonical_line(step, 0, [step, 1, 2]) for step in range(7)]
    lines[5] = lines[5].replace(b'"run"', b'"' + b"r" * 400 + b'"')
    path.write_bytes(b"".join(lines))
    batches = []
    with pytest.raises(CorruptRecordError, match=r"\.jsonl:6: line longer than max_line_bytes=300"):
        for batch in event_batches(path, 2, max_line_bytes=300, background_parse=background_parse):
            batches.append(batch)
    assert [batch.line_numbers for batch in batches] == [[1, 2], [3, 4]]
    assert np.array_equal(np.concatenate([batch.rows[0].counts for batch in batches])[:, 0], np.arange(4))


def parse_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("chronomoe-parse")]


def test_the_worker_thread_ends_when_the_iteration_is_abandoned(tmp_path):
    path = tmp_path / "routing_events.jsonl"
    path.write_bytes(b"".join(canonical_line(step, 0, [1, 2, 3]) for step in range(10)))
    before = set(parse_threads())
    batches = event_batches(path, 2, background_parse=True)
    next(batches)
    started = set(parse_threads()) - before
    assert started
    batches.close()
    assert not started & set(parse_threads())


def test_mutated_counts_are_left_to_full_validation():
    """The mutations of the property test above do reach the checks (else it would compare nothing)."""
    for name, mutate in MUTATIONS.items():
        line = canonical_line(0, 0, [12, 3, 40])
        changed = line.replace(b"[12,3,40]", b"[" + mutate(b"12,3,40") + b"]")
        assert changed != line, name
        assert read_batch([1], [changed]).unaccepted == [0], name

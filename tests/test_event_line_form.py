"""The canonical event line's pieces (chronomoe/io/event_line_form.py): cut where the writer puts them, read as the
model reads them, and lines of any run_id or width on the fast path."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import RoutingEvent
from chronomoe.io.event_line_form import COUNTS_END, cut_line, opening
from chronomoe.io.event_lines import read_batch
from chronomoe.io.serialize import event_line

RUN_IDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)


@st.composite
def events(draw) -> RoutingEvent:
    width = draw(st.integers(1, 6))
    return RoutingEvent(
        run_id=draw(RUN_IDS),
        step=draw(st.integers(0, 10**18 - 1)),
        mode=draw(st.sampled_from(["TRAIN", "INFER"])),
        layer_id=draw(st.integers(0, 10**18 - 1)),
        n_experts=width,
        top_k=draw(st.integers(1, width)),
        expert_token_counts=draw(st.lists(st.integers(0, 2**40), min_size=width, max_size=width)),
        timestamp=draw(st.floats(allow_nan=False, allow_infinity=False)),
        loss=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
        aux_loss=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
    )


@settings(max_examples=300, deadline=None)
@given(events(), st.randoms())
def test_a_writers_line_is_the_models_json_whatever_order_a_trusted_record_holds_its_fields_in(event, random):
    shuffled = list(vars(event).items())
    random.shuffle(shuffled)
    trusted = RoutingEvent.trusted(**dict(shuffled))
    expected = event.model_dump_json().encode() + b"\n"
    assert event_line(event) == expected
    assert event_line(trusted) == expected


@settings(max_examples=300, deadline=None)
@given(events())
def test_a_writers_line_is_the_concatenation_of_its_pieces_and_the_two_keys_cut_out(event):
    line = event_line(event)
    pieces = cut_line(line)
    assert pieces is not None
    head, layer_part, counts, active, tail = pieces
    assert head + layer_part + counts + COUNTS_END + active + tail == line
    assert counts == b",".join(b"%d" % count for count in event.expert_token_counts.tolist())


@settings(max_examples=300, deadline=None)
@given(events())
def test_a_writers_line_of_any_run_id_and_values_takes_the_fast_path_with_the_models_values(event):
    line = event_line(event)
    batch = read_batch([1], [line])
    # the writer escapes a quote, a backslash and a control character: such a run_id is left to full validation
    escaped = any(character in '"\\' or character < " " for character in event.run_id)
    assert batch.unaccepted == ([0] if escaped else [])
    if escaped:
        return
    [rows] = batch.rows
    fast = RoutingEvent.trusted(**rows.event_fields(0))
    assert fast == RoutingEvent.model_validate_json(line)
    assert {name: type(value) for name, value in vars(fast).items()} == {
        name: type(value) for name, value in vars(RoutingEvent.model_validate_json(line)).items()
    }


JSON_FLOATS = st.builds(
    lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
    st.sampled_from(["", "-"]),
    st.sampled_from(["0"]) | st.from_regex(r"[1-9][0-9]{0,25}", fullmatch=True),
    st.sampled_from([""]) | st.from_regex(r"\.[0-9]{1,30}", fullmatch=True),
    st.sampled_from([""]) | st.from_regex(r"[eE][+-]?[0-9]{1,3}", fullmatch=True),
).filter(lambda text: "." in text or "e" in text.lower())


@settings(max_examples=500, deadline=None)
@given(JSON_FLOATS)
def test_a_timestamp_in_json_float_syntax_reads_as_the_model_reads_it_or_is_left_to_it(text):
    line = event_line(
        RoutingEvent(run_id="r", step=1, layer_id=0, n_experts=1, top_k=1, expert_token_counts=[1], timestamp=1.5)
    ).replace(b'"timestamp":1.5', b'"timestamp":' + text.encode())
    head = cut_line(line)[0]  # type: ignore[index]
    read = opening(head)
    try:
        expected = RoutingEvent.model_validate_json(line).timestamp
    except ValueError:  # an infinity: refused by both
        assert read is None
        return
    assert read is not None and read[0] == expected and np.signbit(read[0]) == np.signbit(expected)


def test_lines_of_two_widths_in_one_batch_take_the_fast_path_each_with_its_width():
    lines = [
        event_line(
            RoutingEvent(run_id="r", step=1, layer_id=layer, n_experts=width, top_k=1, expert_token_counts=[1] * width)
        )
        for layer, width in enumerate([2, 3, 2])
    ]
    batch = read_batch([1, 2, 3], lines)
    assert batch.unaccepted == []
    assert sorted((rows.indices, rows.counts.shape) for rows in batch.rows) == [([0, 2], (2, 2)), ([1], (1, 3))]

"""Bad input everywhere: every entry point that takes outside data either works or says which field is wrong.

The contract (README, "Guarantees", "Bad input"): building a record
(``RoutingEvent(...)``, ``model_validate``, ``model_validate_json``,
``from_router_output``) raises ``pydantic.ValidationError``; everything else
raises a :class:`~chronomoe.errors.ChronoMoEError` (``InvalidInputError``
naming the field and value, ``CorruptRecordError`` naming file and line).
Both are ``ValueError`` subclasses. Never an internal ``IndexError``,
``KeyError``, ``TypeError``, a hang, or a count that disagrees with the input.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from chronomoe import (
    AlertRules,
    AlertTransition,
    CorruptRecordError,
    InvalidInputError,
    Monitor,
    RoutingEvent,
    SystemSnapshot,
    load_events,
    load_snapshots,
    load_transitions,
)
from chronomoe.cli import main
from chronomoe.events import MODES
from chronomoe.io import iter_events
from chronomoe.io.run_reader import open_run
from chronomoe.io.run_reader_base import RunCounts
from chronomoe.io.serialize import event_line

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- strategies ---------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
json_lines = json_values.map(lambda value: json.dumps(value).encode())
NUMPY_DTYPES = [
    np.int8,
    np.int64,
    np.uint8,
    np.uint64,
    np.float16,
    np.float64,
    np.bool_,
    np.complex64,
    np.str_,
    np.object_,
]
numpy_arrays = hnp.arrays(
    dtype=st.sampled_from(NUMPY_DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5),
    elements=None,
).filter(lambda array: array.dtype != np.object_ or array.size == 0)
TORCH_DTYPES = [
    torch.int8,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.bool,
    torch.complex64,
]


@st.composite
def tensors(draw, length=None):
    """A torch tensor of any dtype, a shape near ``[length]``, on the CPU or the meta device, values in -3..12."""
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    if length is None:
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
    else:
        shape = draw(st.sampled_from([[length], [length, 1], [], [length + 1], [max(length - 1, 0)], [2, length]]))
    device = draw(st.sampled_from(["cpu", "cpu", "cpu", "meta"]))
    values = torch.tensor(draw(st.lists(st.integers(-3, 12), min_size=math.prod(shape), max_size=math.prod(shape))))
    tensor = values.reshape(shape).to(dtype)
    if draw(st.booleans()) and (tensor.is_floating_point() or tensor.is_complex()):
        tensor.requires_grad_(True)
    return tensor.to(device)


anything = (
    json_values | numpy_arrays | tensors() | st.binary(max_size=8) | st.just(float("nan")) | st.just(float("inf"))
)

VALID_EVENT = {
    "run_id": "run",
    "step": 3,
    "mode": "TRAIN",
    "layer_id": 1,
    "n_experts": 4,
    "top_k": 2,
    "expert_token_counts": [5, 0, 2, 1],
}
EVENT_FIELDS = [*RoutingEvent.model_fields, "unknown_field"]


def assert_valid_event(event: RoutingEvent) -> None:
    """A constructed event's derived fields agree with its counts (no silently wrong count)."""
    counts = event.expert_token_counts
    assert counts.dtype == np.int64 and counts.ndim == 1 and not counts.flags.writeable
    assert len(counts) == event.n_experts >= event.top_k >= 1
    assert (counts >= 0).all() and event.token_count == int(counts.sum())
    assert event.active_experts == tuple(np.flatnonzero(counts).tolist())


# -- records ------------------------------------------------------------------------------------
@FUZZ
@given(st.dictionaries(st.sampled_from(EVENT_FIELDS), anything, min_size=1, max_size=3))
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")  # loss=<0-d tensor> works
def test_routing_event_construction_works_or_raises_a_validation_error_naming_the_field(changes):
    try:
        event = RoutingEvent(**{**VALID_EVENT, **changes})
    except ValidationError as error:
        assert any(field in str(error) for field in EVENT_FIELDS), error
    else:
        assert_valid_event(event)


@FUZZ
@given(st.binary(max_size=200) | json_lines)
@pytest.mark.parametrize("model", [RoutingEvent, SystemSnapshot, AlertTransition, AlertRules])
def test_model_validate_json_on_any_bytes_works_or_raises_a_validation_error(model, data):
    with contextlib.suppress(ValidationError):
        model.model_validate_json(data)


@FUZZ
@given(tensors(length=4) | numpy_arrays | json_values)
def test_from_router_output_works_or_raises_a_validation_error_and_keeps_the_counts(used_capacity):
    try:
        event = RoutingEvent.from_router_output("run", 0, "TRAIN", 0, used_capacity, n_experts=4, top_k=1)
    except ValidationError as error:
        assert "expert_token_counts" in str(error) or "n_experts" in str(error)
    else:
        assert_valid_event(event)
        given_counts = (
            used_capacity.detach().to("cpu", torch.float64).numpy()
            if isinstance(used_capacity, torch.Tensor)
            else np.asarray(used_capacity, dtype=np.float64)
        )
        assert np.array_equal(event.expert_token_counts, given_counts)


# -- the fast events loader ---------------------------------------------------------------------
# load_events makes an event of each line in the writer's canonical form through byte patterns and vectorised
# checks, without pydantic, and hands every other line to RoutingEvent.model_validate_json. Its contract: it accepts
# and rejects exactly what the model does, and what it accepts is the model's event, field for field and type for type.
# Removing any one of its checks makes one of these tests fail (FAST_LOADER_CASES names which).

MISSING = object()
"""A change that removes the key."""


def canonical_record(counts=(5, 0, 2, 1), **changes) -> dict:
    """The writer's JSON object of an event with these counts, token_count and active_experts derived from them
    as Python reads them (a boolean counts 0 or 1), then ``changes`` applied (``MISSING`` removes a key)."""
    width = len(counts)
    event = RoutingEvent(
        run_id="run",
        step=3,
        layer_id=1,
        n_experts=width,
        top_k=1,
        expert_token_counts=[0] * width,
        timestamp=1.5,
        loss=0.25,
    )
    numeric = all(type(count) in (int, float, bool) for count in counts)
    record = {
        **orjson.loads(event_line(event)),
        "expert_token_counts": list(counts),
        "token_count": sum(counts) if numeric else 0,
        "active_experts": [expert for expert, count in enumerate(counts) if count] if numeric else [],
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not MISSING}


def json_line(value, separators: tuple[str, str] = (",", ":")) -> bytes:
    """``value`` as one JSONL line, integers of any size written exactly; without spaces, as the writer writes."""
    return json.dumps(value, separators=separators).encode() + b"\n"


def canonical_line_with_counts(counts: list[int]) -> bytes:
    """The writer's line of an event with these counts (beyond int64 too), token_count and active_experts derived."""
    return json_line(canonical_record(counts))


def event_as_read(event: RoutingEvent) -> dict:
    """Every field of an event as (type, value), arrays as (type, dtype, writeable, values); and the fields set."""
    return {
        "fields set": event.model_fields_set,
        **{
            name: (type(value), value.dtype, value.flags.writeable, value.tolist())
            if isinstance(value, np.ndarray)
            else (type(value), value)
            for name, value in vars(event).items()
        },
    }


def model_events(lines: list[bytes]) -> list[RoutingEvent | None]:
    """``RoutingEvent.model_validate_json`` of each line; ``None`` for a line it rejects."""
    events: list[RoutingEvent | None] = []
    for line in lines:
        try:
            events.append(RoutingEvent.model_validate_json(line))
        except ValidationError:
            events.append(None)
    return events


def assert_loaded_as_the_model_reads(path, lines: list[bytes], batch_lines: int = 4096) -> None:
    """``iter_events`` of a file of these lines raises CorruptRecordError naming the first line the model rejects,
    if any; of a file of the lines the model accepts, gives the model's events (same values, same types); of a
    file of one line the model rejects, raises CorruptRecordError naming line 1. ``open_run(...).counts()`` agrees.
    """

    def load_events(path):
        return list(iter_events(path, batch_lines))

    expected = model_events(lines)
    path.write_bytes(b"".join(lines))
    if None in expected:
        with pytest.raises(CorruptRecordError) as raised:
            load_events(path)
        assert (raised.value.path, raised.value.line_number) == (str(path), expected.index(None) + 1)
        with pytest.raises(CorruptRecordError) as raised:
            open_run(path.parent, "jsonl").counts()
        assert (raised.value.path, raised.value.line_number) == (str(path), expected.index(None) + 1)
    accepted = [event for event in expected if event is not None]
    path.write_bytes(b"".join(line for line, event in zip(lines, expected, strict=True) if event is not None))
    assert [event_as_read(event) for event in load_events(path)] == [event_as_read(event) for event in accepted]
    if any(max(event.step, event.layer_id) >= 2**63 for event in accepted):
        return  # a counts array indexes steps and layers by int64: such a file has none (OverflowError)
    for mode in MODES:
        assert_counts_equal(open_run(path.parent, "jsonl").counts(mode), counts_of(accepted, mode))
    for event in accepted:
        assert_valid_event(event)
    for line in (line for line, event in zip(lines, expected, strict=True) if event is None):
        path.write_bytes(line)
        with pytest.raises(CorruptRecordError) as raised:
            load_events(path)
        assert raised.value.line_number == 1


def counts_of(events: list[RoutingEvent], mode: str) -> RunCounts:
    """The ``RunCounts`` of these events, built one event at a time (a later event of a step and layer wins)."""
    events = [event for event in events if event.mode == mode]
    cells = {(event.step, event.layer_id): event.expert_token_counts for event in events}
    steps = sorted({step for step, _ in cells})
    layers = sorted({layer for _, layer in cells})
    width = max((event.n_experts for event in events), default=0)  # of every event, a replaced one too
    counts = np.zeros((len(steps), len(layers), width), np.int64)
    for (step, layer), row in cells.items():
        counts[steps.index(step), layers.index(layer), : len(row)] = row
    return RunCounts(np.array(steps, np.int64), np.array(layers, np.int64), counts)


def assert_counts_equal(actual: RunCounts, expected: RunCounts) -> None:
    for name in ("steps", "layer_ids", "counts"):
        assert np.array_equal(getattr(actual, name), getattr(expected, name)), name
        assert getattr(actual, name).shape == getattr(expected, name).shape, name


FAST_LOADER_CASES = {
    # Lines in the writer's form, then each with one fault, and after it the check of the fast loader that leaves
    # the line to the model (chronomoe/io/event_lines.py; "the opening", "the layer part" and "the tail" are the
    # patterns of chronomoe/io/event_line_form.py). Lines without a check named document what the model alone
    # decides.
    "the writer's line": canonical_record(),
    "every expert active": canonical_record([1, 2, 3, 4]),
    "counts at the fast loader's bound": canonical_record([2**60] * 4),
    "a boolean among integer counts": canonical_record([True, 2, 0, 1]),  # 1, as numpy reads it
    "a JSON array, not an object": list(canonical_record().values()),  # the opening
    "an extra key": canonical_record(extra=1),  # the tail
    "no aux_loss key": canonical_record(aux_loss=MISSING),  # the tail
    "a negative step": canonical_record(step=-1),  # the opening
    "an integral float step": canonical_record(step=3.0),  # the opening
    "a boolean step": canonical_record(step=True),  # the opening
    "a step beyond 64 bits": canonical_record(step=2**64),  # the opening (18 digits at most)
    "a negative layer_id": canonical_record(layer_id=-1),  # the layer part
    "an integral float layer_id": canonical_record(layer_id=1.0),  # the layer part
    "a layer_id beyond 64 bits": canonical_record(layer_id=2**70),  # the layer part (18 digits at most)
    "an integral float n_experts": canonical_record(n_experts=4.0),  # the layer part
    "a boolean n_experts": canonical_record([5], n_experts=True),  # the layer part
    # top_k <= n_experts, which implies n_experts >= 1:
    "n_experts 0, no counts": canonical_record(n_experts=0, expert_token_counts=[], token_count=0, active_experts=[]),
    "n_experts far beyond the counts": canonical_record(n_experts=2**62),  # the layer part (18 digits at most)
    "n_experts of 18 digits, far beyond the counts": canonical_record(n_experts=10**17),  # len(counts) == n_experts
    "fewer counts than n_experts": canonical_record([5, 0, 2], n_experts=4),  # len(counts) == n_experts
    "top_k 0": canonical_record(top_k=0),  # 1 <= top_k
    "top_k beyond n_experts": canonical_record(top_k=5),  # top_k <= n_experts
    "an integral float top_k": canonical_record(top_k=1.0),  # the layer part
    "a boolean top_k": canonical_record(top_k=True),  # the layer part
    "an empty run_id": canonical_record(run_id=""),  # the opening
    "a numeric run_id": canonical_record(run_id=5),  # the opening
    "an unknown mode": canonical_record(mode="EVAL"),  # the layer part
    "a lowercase mode": canonical_record(mode="train"),  # the layer part
    "a numeric mode": canonical_record(mode=0),  # the layer part
    "an integer timestamp": canonical_record(timestamp=12),  # the opening (the model: 12.0)
    "a numeric-string timestamp": canonical_record(timestamp="12.5"),  # the opening
    "a boolean timestamp": canonical_record(timestamp=True),  # the opening
    "a timestamp beyond 64 bits": canonical_record(timestamp=2**70),  # the opening
    "an integral float token_count": canonical_record(token_count=8.0),  # the tail
    "a boolean token_count": canonical_record([1, 0, 0, 0], token_count=True),  # the tail
    "a token_count one too many": canonical_record(token_count=9),  # token_count == sum of the counts
    "a token_count one too few": canonical_record(token_count=7),  # token_count == sum of the counts
    "no token_count": canonical_record(token_count=None),  # the tail
    "an integer loss": canonical_record(loss=1),  # the tail (the model: 1.0)
    "a boolean aux_loss": canonical_record(aux_loss=True),  # the tail
    "a numeric-string loss": canonical_record(loss="0.5"),  # the tail
    "router_prob_sums": canonical_record(router_prob_sums=[0.5, 0.0, 0.25, 0.25]),  # the tail
    "router_prob_sums, too few": canonical_record(router_prob_sums=[0.5]),  # the tail
    "router_prob_sums beyond 64 bits": canonical_record(router_prob_sums=[2**64] * 4),  # the tail
    "null counts": canonical_record(expert_token_counts=None),  # the layer part
    "counts, a string of n_experts characters": canonical_record(expert_token_counts="5021"),  # the layer part
    "a negative count": canonical_record([-1, 4, 0, 2]),  # digits and commas only
    "only boolean counts": canonical_record([True, True, False, True]),  # digits and commas only
    "a numeric-string count": canonical_record(["1", 2, 0, 1]),  # digits and commas only
    "a count beyond int64": canonical_record([2**63, 0, 0, 1]),  # counts <= 2**62 / n (reads as 2**63 - 1)
    "a count beyond 64 bits": canonical_record([2**64, 0, 0, 1]),  # counts <= 2**62 / n
    "a fractional count": canonical_record([1.5, 2, 0, 1]),  # digits and commas only
    "an integral float count": canonical_record([1.0, 2, 0, 1]),  # digits and commas only
    "a count beyond the fast loader's bound": canonical_record([2**60 + 1, 0, 0, 0]),  # counts <= 2**62 / n
    "counts whose int64 sum wraps to 0": canonical_record([2**62] * 4, token_count=0),  # counts <= 2**62 / n
    "counts summing to 2**63 in float64": canonical_record([2**62, 2**62 - 1, 0, 0]),  # counts <= 2**62 / n
    "active_experts missing an expert": canonical_record(active_experts=[0, 2]),  # active_experts == non-zero counts
    "active_experts naming an idle expert": canonical_record(active_experts=[0, 1, 2, 3]),  # all-active shortcut
    "active_experts out of order": canonical_record(active_experts=[3, 2, 0]),  # active_experts == non-zero counts
    "active_experts as integral floats": canonical_record(active_experts=[0.0, 2, 3]),  # active_experts == ...
    "active_experts as numeric strings": canonical_record(active_experts=["0", "2", "3"]),  # active_experts == ...
    "no active_experts": canonical_record(active_experts=None),  # the line is cut at "],\"active_experts\":["
}


@pytest.mark.parametrize("record", FAST_LOADER_CASES.values(), ids=FAST_LOADER_CASES)
def test_the_fast_event_loader_agrees_with_the_model_on_each_fault_of_a_canonical_line(tmp_path, record):
    assert_loaded_as_the_model_reads(tmp_path / "routing_events.jsonl", [json_line(record)])


WRITERS_LINE = json_line(canonical_record())  # counts [5,0,2,1], active_experts [0,2,3]
COUNTS, ACTIVE = b'"expert_token_counts":[5,0,2,1]', b'"active_experts":[0,2,3]'
RAW_FAST_LOADER_CASES = {
    # Faults in the bytes the fast loader cuts out of a line and parses with numpy (chronomoe/io/event_lines.py),
    # or that would make it cut the wrong bytes.
    "a leading zero in a count": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"[5,0", b"[05,0")),
    "a count written 00": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b",0,", b",00,")),
    "a negative zero count": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b",0,", b",-0,")),
    "a count in exponent form": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"[5,", b"[5e0,")),
    "a count with a fraction": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"[5,", b"[5.0,")),
    "a 19-digit count beyond int64": canonical_line_with_counts([9223372036854775808, 0, 0, 1]),
    "a 25-digit count": canonical_line_with_counts([10**24, 0, 0, 1]),
    "spaces in the counts": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b",", b", ")),
    "a trailing comma in the counts": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"1]", b"1,]")),
    "a leading comma in the counts": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"[5", b"[,5")),
    "an empty count": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b"0,2", b"0,,2")),
    "a nested array in the counts": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b",0,", b",[0],")),
    "empty counts, n_experts 1": json_line(
        canonical_record([5], expert_token_counts=[], token_count=0, active_experts=[])
    ),
    "spaces in active_experts": WRITERS_LINE.replace(ACTIVE, ACTIVE.replace(b",", b", ")),
    "a leading zero in active_experts": WRITERS_LINE.replace(ACTIVE, ACTIVE.replace(b",2,", b",02,")),
    "active_experts before the counts": WRITERS_LINE.replace(COUNTS + b",", b"").replace(
        ACTIVE, ACTIVE + b"," + COUNTS
    ),
    "a space before the key's colon": WRITERS_LINE.replace(COUNTS, COUNTS.replace(b'":', b'" :')),
    "a space before the line": b" " + WRITERS_LINE,
    "the counts key twice, the second with other counts": WRITERS_LINE.replace(
        b',"token_count"', b',"expert_token_counts" :[1,0,0,7],"token_count"'
    ),
    "the counts key twice, the second escaped": WRITERS_LINE.replace(
        b',"token_count"', b',"expert\\u005ftoken_counts":[1,0,0,7],"token_count"'
    ),
    "active_experts twice": WRITERS_LINE.replace(b',"token_count"', b',"active_experts":[0],"token_count"'),
    "the keys in a run_id": json_line(canonical_record(run_id='"expert_token_counts":[1,2],"active_experts":[0]')),
    "a run_id with an escaped character": json_line(canonical_record(run_id="tab\there")),
    "a run_id that is not UTF-8": WRITERS_LINE.replace(b'"run_id":"run"', b'"run_id":"r\xffn"'),  # UTF-8 decoding
    "the counts key as a value": json_line(canonical_record(run_id="expert_token_counts")),
}


@pytest.mark.parametrize("line", RAW_FAST_LOADER_CASES.values(), ids=RAW_FAST_LOADER_CASES)
def test_the_fast_event_loader_agrees_with_the_model_on_each_fault_in_a_lines_bytes(tmp_path, line):
    assert_loaded_as_the_model_reads(tmp_path / "routing_events.jsonl", [line])
    assert_loaded_as_the_model_reads(tmp_path / "routing_events.jsonl", [WRITERS_LINE, line, WRITERS_LINE])


@pytest.mark.parametrize("number", [b"1e999", b"-1.5E+999"], ids=["inf", "-inf"])
@pytest.mark.parametrize("field", ["timestamp", "loss", "aux_loss"])
def test_the_fast_event_loader_refuses_a_float_that_reads_as_an_infinity_itself(tmp_path, field, number):
    # float() reads these as infinities, as the model's parser does: the fast loader must refuse them itself
    line = json_line(canonical_record(**{field: 1.25})).replace(
        b'"%s":1.25' % field.encode(), b'"%s":%s' % (field.encode(), number)
    )
    path = tmp_path / "routing_events.jsonl"
    path.write_bytes(line)
    with pytest.raises(CorruptRecordError, match=f"{field} must be finite"):
        load_events(path)
    assert_loaded_as_the_model_reads(path, [line])


COUNTS = st.integers(0, 9)
LARGE_COUNTS = st.sampled_from([2**60, 2**60 + 1, 2**61, 2**62 - 1, 2**62, 2**63 - 1])
COUNT_FAULTS = st.sampled_from([-1, 2**63, 2**64, True, False, 1.0, 1.5, "1", None, [1]])
"""Counts that are not plain int64 values, or not counts."""
INTEGER_FAULTS = st.sampled_from([-1, -(2**63), 2**63, 2**64, 3.0, True, False, "3", None])
"""Values of a non-negative integer field that are not, or that orjson and the model read differently."""
FLOAT_FAULTS = st.sampled_from([12, True, "12.5", None, 2**70, -0.0, 1e308])
"""Values of a float field that are not floats on the line (the model reads most as floats), and edge floats."""
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def field_faults(record: dict) -> dict:
    """Faulty (or edge) values of each field of a canonical record, as strategies."""
    width, total, active = record["n_experts"], record["token_count"], record["active_experts"]
    wrapped_total = (total + 2**63) % 2**64 - 2**63 if type(total) is int else total  # the sum in int64
    return {
        "timestamp": FLOAT_FAULTS,
        "run_id": st.sampled_from(["", 5, None, ["run"]]),
        "step": INTEGER_FAULTS,
        "layer_id": INTEGER_FAULTS,
        "mode": st.sampled_from(["EVAL", "train", "", 0, None]),
        "n_experts": st.sampled_from([0, -1, width - 1, width + 1, float(width), True, 2**62, None]),
        "top_k": st.sampled_from([0, -1, width, width + 1, 1.0, True, None]),
        "token_count": st.sampled_from([total - 1, total + 1, wrapped_total, float(total), True, False, None, "0"]),
        "active_experts": st.sampled_from(
            [
                active[1:],
                [*active, width - 1],
                list(range(width)),
                active[::-1],
                [float(expert) for expert in active],
                [str(expert) for expert in active],
                None,
            ]
        ),
        "router_prob_sums": st.lists(FLOATS, min_size=width - 1, max_size=width + 1) | st.just([2**64] * width),
        "loss": FLOAT_FAULTS,
        "aux_loss": FLOAT_FAULTS,
        "expert_token_counts": st.sampled_from([None, "x" * width, width, {}, []]),
        "extra": st.integers(),
    }


@st.composite
def near_canonical_event_lines(draw) -> bytes:
    """A line in the writer's form, plain or with a fault or two drawn from those the fast loader must catch.

    Its token_count and active_experts are derived from its counts as Python reads them, so that a fault in the
    counts is caught by the checks of the counts alone.
    """
    width = draw(st.integers(1, 5))
    counts = draw(st.lists(draw(st.sampled_from([COUNTS, COUNTS, LARGE_COUNTS])), min_size=width, max_size=width))
    if draw(st.integers(0, 3)) == 0:
        counts[draw(st.integers(0, width - 1))] = draw(COUNT_FAULTS)
    record = canonical_record(counts)
    faults = field_faults(record)
    for fault in draw(st.lists(st.sampled_from([*faults, "no key", "array"]), max_size=2)):
        if fault == "no key":
            # not the timestamp: the model stamps an event without one with the time it validates it
            del record[draw(st.sampled_from(sorted(set(record) - {"timestamp"})))]
        elif fault == "array":
            return json_line(list(record.values()))
        else:
            record[fault] = draw(faults[fault])
    return json_line(record, draw(st.sampled_from([(",", ":"), (",", ":"), (", ", ": ")])))  # mostly the writer's


any_value_in_one_field = st.builds(
    lambda field, value: [json_line({**canonical_record(), field: value})], st.sampled_from(EVENT_FIELDS), json_values
)


@settings(FUZZ, max_examples=500, derandomize=True)
@given(st.lists(near_canonical_event_lines(), min_size=1, max_size=4) | any_value_in_one_field)
@pytest.mark.parametrize("batch_lines", [1, 4096], ids=["a-line-per-batch", "default"])
def test_the_fast_event_loader_accepts_and_rejects_exactly_what_the_model_does(tmp_path, batch_lines, lines):
    # with one line per batch, each line's counts are parsed alone
    assert_loaded_as_the_model_reads(tmp_path / "routing_events.jsonl", lines, batch_lines)


# -- recording ----------------------------------------------------------------------------------
N_EXPERTS = (4, 8)


@FUZZ
@given(
    st.integers(-2, 3) | st.sampled_from([1.0, "0", None]),
    st.sampled_from(["indices", "counts"]),
    tensors() | tensors(length=4) | tensors(length=8) | json_values,
    st.sampled_from(["TRAIN", "INFER", "EVAL", 0]),
)
def test_record_works_or_raises_invalid_input_and_snapshots_count_exactly_the_valid_ids(layer_id, kind, tensor, mode):
    monitor = Monitor("run", n_experts=N_EXPERTS, lens=None)
    try:
        monitor.record(layer_id, **{kind: tensor}, mode=mode)
    except InvalidInputError:
        return
    snapshots = []
    monitor.bus.subscribe("snapshot", snapshots.append, mode=mode)
    monitor.step(0)
    monitor.snapshot(0)
    [snapshot] = snapshots
    position = int(layer_id)
    n_experts = N_EXPERTS[position]
    values = tensor.detach().to(torch.float64).reshape(-1).numpy()
    if kind == "indices":
        inside = ((values >= 0) & (values < n_experts)).sum()
        expected_tokens, expected_outside = int(inside), int(values.size - inside)
    else:
        expected_tokens, expected_outside = int(np.clip(np.round(values), 0, None).sum()), 0
    assert snapshot.layer(position).token_count == expected_tokens
    assert snapshot.out_of_range_expert_ids == expected_outside


def test_out_of_range_expert_ids_are_counted_in_the_snapshot_not_in_any_layer(caplog):
    monitor = Monitor("run", n_experts=[4], lens=None)
    monitor.record(0, indices=torch.tensor([[0, 1], [3, 4], [-1, 2], [7, 3]]))
    monitor.step(1)
    monitor.record(0, indices=torch.tensor([[9, 0]]))
    monitor.step(2)
    snapshot = monitor.snapshot(2)
    assert snapshot.out_of_range_expert_ids == 4
    assert snapshot.layer(0).token_count == 6
    assert snapshot.layer(0).expert_token_counts.tolist() == [2, 1, 1, 2]
    assert "expert ids outside 0..n_experts-1" in caplog.text
    monitor.record(0, indices=torch.tensor([[0, 1]]))
    monitor.step(3)
    assert monitor.snapshot(3).out_of_range_expert_ids == 0


def test_recording_out_of_range_ids_reads_no_tensor_value_on_the_host(monkeypatch):
    monitor = Monitor("run", n_experts=[4], lens=None)
    monitor.record(0, indices=torch.tensor([[0, 1]]))  # makes the buffers
    for method in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__"):

        def refuse(*args, _method=method, **kwargs):
            raise AssertionError(f"host read: Tensor.{_method}")

        monkeypatch.setattr(torch.Tensor, method, refuse)
    monitor.record(0, indices=torch.tensor([[7, -2], [3, 99]]))
    monitor.step(0)
    monkeypatch.undo()
    assert monitor.snapshot(0).out_of_range_expert_ids == 3


@FUZZ
@given(json_values | numpy_arrays)
def test_observe_counts_works_or_raises_invalid_input(counts):
    monitor = Monitor("run", lens=None)
    try:
        snapshot = monitor.observe(counts, step=0)
    except (InvalidInputError, ValidationError):
        return
    given_total = sum(int(value) for row in (counts if len(counts) else []) for value in np.ravel(row).tolist())
    assert sum(layer.token_count for layer in snapshot.layers) == given_total


# -- files --------------------------------------------------------------------------------------
LOADERS = {"events": load_events, "snapshots": load_snapshots, "transitions": load_transitions}


@FUZZ
@given(st.lists(st.binary(max_size=40) | json_lines, max_size=6), st.booleans())
@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_on_any_bytes_return_one_record_per_complete_line_or_raise_corrupt_record(
    tmp_path, loader, lines, torn
):
    data = b"\n".join(lines) + (b"" if torn else b"\n")
    path = tmp_path / "file.jsonl"
    path.write_bytes(data)
    try:
        records = LOADERS[loader](path)
    except CorruptRecordError as error:
        assert error.path == str(path) and 1 <= error.line_number <= data.count(b"\n") + 1
        return
    complete = data.splitlines(keepends=True)
    complete = [line for line in complete if line.endswith(b"\n") and line.strip()]
    assert len(records) == len(complete)


@FUZZ
@given(st.binary(max_size=300) | json_lines)
def test_a_rules_file_gives_rules_or_an_error_naming_the_file(tmp_path, data):
    path = tmp_path / "rules.json"
    path.write_bytes(data)
    try:
        rules = AlertRules.from_file(path)
    except InvalidInputError as error:
        assert str(path) in str(error)
    else:
        assert 0 < rules.neff_ratio <= 1 and rules.pre_persistence >= 1


# -- command line ---------------------------------------------------------------------------------
COMMANDS = ["summary", "replay", "report", "validate", "schema", "demo", "nope", "--version", "-h"]
OPTIONS = ["--mode", "--rules", "--window", "--out", "-o", "--steps", "--seed", "--quiet", "TRAIN", "0", "-1", "x,y"]


@pytest.fixture(scope="module")
def cli_paths(tmp_path_factory):
    """Paths the fuzzer picks from: a recorded run, a run with garbage files, a file, a missing path, odd names."""
    from conftest import _write_collapsing_run

    root = tmp_path_factory.mktemp("cli")
    run = _write_collapsing_run(root, "run", n_snapshots=4)
    garbage = root / "garbage"
    garbage.mkdir()
    for name in ("routing_events.jsonl", "snapshots.jsonl", "alerts.jsonl"):
        (garbage / name).write_bytes(b'{"step": 1}\n\xff\xfe not json\n[]\n')
    (garbage / "run_manifest.json").write_bytes(b"[1, 2]")
    odd_manifest = root / "odd_manifest"
    shutil.copytree(run, odd_manifest)
    (odd_manifest / "run_manifest.json").write_bytes(b'{"rules": [1]}')
    with open(odd_manifest / "snapshots.jsonl", "ab") as handle:
        handle.write(b'{"torn')
    (root / "rules.json").write_bytes(b'{"neff_ratio": 0.5}')
    return [
        str(run),
        str(garbage),
        str(odd_manifest),
        str(root / "rules.json"),
        str(root / "absent"),
        "",
        ".",
        "a\0b",
        "/",
        str(root / "out"),
    ]


@FUZZ
@given(st.data())
def test_the_cli_on_any_arguments_exits_with_a_code_and_one_line_error_never_a_traceback(
    capsys, monkeypatch, cli_paths, data
):
    import chronomoe.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda **options: 0, raising=False)
    words = st.sampled_from(cli_paths) | st.sampled_from(OPTIONS) | st.text(max_size=8)
    argv = [
        data.draw(st.sampled_from(COMMANDS)),
        data.draw(st.sampled_from(cli_paths) | st.text(max_size=8)),
        *data.draw(st.lists(words, max_size=4)),
    ]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    _, err = capsys.readouterr()
    assert code in (0, 1, 2, None), argv
    assert "Traceback" not in err, argv
    if code == 2 and argv[0] in COMMANDS[:6] and not any("\n" in word for word in argv):
        lines = err.rstrip("\n").split("\n")  # not splitlines(): arguments may hold \x1e, \x85, ...
        assert lines[-1].startswith("chronomoe") and "error" in lines[-1], (argv, err)
        assert len(lines) == 1 or lines[0].startswith("usage:"), (argv, err)  # argparse prints its usage first

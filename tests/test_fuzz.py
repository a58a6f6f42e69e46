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
@given(st.sampled_from(EVENT_FIELDS), json_values)
def test_the_fast_event_loader_accepts_and_rejects_exactly_what_the_model_does(tmp_path, field, value):
    line = json.dumps({**orjson.loads(event_line(RoutingEvent(**VALID_EVENT))), field: value}).encode() + b"\n"
    path = tmp_path / "routing_events.jsonl"
    path.write_bytes(line)
    try:
        expected = RoutingEvent.model_validate_json(line)
    except ValidationError:
        with pytest.raises(CorruptRecordError) as raised:
            load_events(path)
        assert (raised.value.path, raised.value.line_number) == (str(path), 1)
    else:
        assert load_events(path) == [expected]
        assert_valid_event(expected)


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

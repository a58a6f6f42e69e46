"""What the report reads and computes: snapshot and decision rows, time columns, run data, comparisons.

The report reads snapshot lines on a fast path (arrays cut out, counts
parsed by numpy) and falls back to full validation; both must give the same
row. Long runs are drawn in columns of snapshots whose sums and worst values
must be exact.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import Monitor
from chronomoe.controller import PressureController
from chronomoe.errors import CorruptRecordError, InvalidInputError
from chronomoe.report import column_view, load_run
from chronomoe.report.columns import ColumnSums, column_edges, reduce_columns
from chronomoe.report.compare import comparison_rows
from chronomoe.report.decision_rows import DecisionRow, parse_decision_line
from chronomoe.report.payload import encode_loads, expert_columns
from chronomoe.report.rows import NO_DATA, _fast_row, parse_snapshot_line, row_from_snapshot
from chronomoe.snapshots import SystemSnapshot

BALANCED = [100] * 8
COLLAPSED = [700, 250, 20, 10, 10, 5, 5, 0]  # Top2 0.95, one dead expert


def record(tmp_path, windows, run_id="run", controller=None, **observe):
    """A run folder from ``windows`` (``[snapshot][layer][expert]`` counts), one snapshot each 10 steps."""
    options = {} if controller is None else {"controller": controller}
    with Monitor(run_id, output_dir=tmp_path, lens=None, **options) as monitor:
        for position, window in enumerate(windows):
            monitor.observe(window, step=10 * (position + 1), train_loss=3.0 - 0.01 * position, **observe)
    return tmp_path / run_id


def rows_equal(first, second):
    for name in first.__dataclass_fields__:
        a, b = getattr(first, name), getattr(second, name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=name)
        elif isinstance(a, float) and math.isnan(a):
            assert math.isnan(b), name
        else:
            assert a == b, name


# -- snapshot rows ---------------------------------------------------------------------------------
def test_the_fast_path_and_full_validation_read_the_same_row(tmp_path):
    windows = [[BALANCED, [0] * 8, [5] * 4]] * 2 + [[COLLAPSED, [0] * 8, [9, 1, 0, 0]]] * 6
    lines = (record(tmp_path, windows) / "snapshots.jsonl").read_bytes().splitlines()
    for line in lines:
        fast = _fast_row(line)
        assert fast is not None
        rows_equal(fast, row_from_snapshot(SystemSnapshot.model_validate_json(line)))
    last = parse_snapshot_line(lines[-1])
    assert last.counts.shape == (3, 8) and last.counts[2, 4:].sum() == 0  # a 4-expert layer, zero-padded
    assert last.states[1] == NO_DATA and math.isnan(last.n_effective[1])


def test_a_line_in_another_key_order_is_read_by_full_validation_with_the_same_row(tmp_path):
    line = (record(tmp_path, [[COLLAPSED, BALANCED]]) / "snapshots.jsonl").read_bytes().splitlines()[0]
    reordered = orjson.loads(line)
    reordered["layers"] = [dict(reversed(list(layer.items()))) for layer in reordered["layers"]]
    other = orjson.dumps(reordered)
    assert _fast_row(other) is None
    rows_equal(parse_snapshot_line(other), parse_snapshot_line(line))


@pytest.mark.parametrize(
    ("replace", "by"),
    [
        (b'"token_count":1000', b'"token_count":999'),  # the counts no longer sum to it
        (b'"expert_token_counts":[700,', b'"expert_token_counts":[700.5,'),
        (b'"expert_token_counts":[700,', b'"expert_token_counts":[99999999999999999999,'),
        (b'"n_experts":8', b'"n_experts":9'),
        (b'"no_data":false', b'"no_data":0'),
    ],
)
def test_a_line_failing_a_fast_check_gets_what_full_validation_says(tmp_path, replace, by):
    line = (record(tmp_path, [[COLLAPSED]]) / "snapshots.jsonl").read_bytes().splitlines()[0]
    assert replace in line
    bad = line.replace(replace, by, 1)
    assert _fast_row(bad) is None
    try:
        expected = row_from_snapshot(SystemSnapshot.model_validate_json(bad))
    except ValueError as error:
        with pytest.raises(type(error)):
            parse_snapshot_line(bad)
    else:
        rows_equal(parse_snapshot_line(bad), expected)


def test_a_corrupt_snapshot_line_is_skipped_and_named_in_the_runs_warnings(tmp_path):
    run_dir = record(tmp_path, [[BALANCED]] * 3)
    path = run_dir / "snapshots.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"step": "x"}\n' + lines[2])
    run = load_run(run_dir)
    assert run.n_snapshots == 2 and [error.line_number for error in run.corrupt_lines] == [2]
    assert "1 corrupt line(s) skipped (first: line 2" in run.warnings[0]


def test_a_corrupt_decision_line_stops_the_report_naming_file_and_line(tmp_path):
    run_dir = record(tmp_path, [[BALANCED]] * 3)
    path = run_dir / "decisions.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"step": "x"}\n' + b"".join(lines[2:]))
    with pytest.raises(CorruptRecordError, match=r"decisions\.jsonl:2"):
        load_run(run_dir)


def test_steps_recorded_twice_show_their_last_recording_and_are_named_in_the_warnings(tmp_path):
    run_dir = record(tmp_path, [[BALANCED]] * 3)
    path = run_dir / "snapshots.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + lines[1] + lines[2])  # steps 2 and 3 recorded again
    run = load_run(run_dir)
    once = load_run(record(tmp_path / "once", [[BALANCED]] * 3))
    assert run.steps.tolist() == once.steps.tolist()
    assert run.superseded_snapshots == 2 and run.superseded_steps == (once.steps[1], once.steps[2])
    assert "recorded more than once" in run.warnings[0]


def test_a_torn_last_line_is_skipped(tmp_path):
    run_dir = record(tmp_path, [[BALANCED]] * 3)
    with open(run_dir / "snapshots.jsonl", "ab") as handle:
        handle.write(b'{"step": 40, "layers": [')
    assert load_run(run_dir).steps.tolist() == [10, 20, 30]


def test_a_run_without_snapshots_of_the_mode_is_refused(tmp_path):
    run_dir = record(tmp_path, [[BALANCED]])
    with pytest.raises(InvalidInputError, match="holds no INFER snapshots"):
        load_run(run_dir, "INFER")


# -- time columns ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.sampled_from([2, 4, 6, 16]), st.integers(0, 2**31))
def test_column_sums_keep_at_most_max_columns_and_lose_no_token(snapshots, max_columns, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1000, size=(snapshots, 3, 5))
    sums = ColumnSums(max_columns)
    for row in values:
        sums.add(np.arange(3), row)
    width = sums.width
    assert len(sums.sums) <= max_columns and width & (width - 1) == 0
    expected = [values[start : start + width].sum(axis=0) for start in range(0, snapshots, width)]
    np.testing.assert_array_equal(sums.sums, np.stack(expected))


def test_column_sums_grow_when_a_layer_or_an_expert_appears():
    sums = ColumnSums(4)
    sums.add(np.array([0]), np.array([[1, 2]]))
    sums.add(np.array([1, 0]), np.array([[5, 5, 5], [1, 1, 1]]))
    np.testing.assert_array_equal(sums.sums, [[[1, 2, 0], [0, 0, 0]], [[1, 1, 1], [5, 5, 5]]])


def test_reduce_columns_takes_the_worst_of_each_column_ignoring_no_data():
    values = np.array([[1.0], [np.nan], [0.5], [0.7], [np.nan]])
    assert reduce_columns(values, 2, "min")[:, 0].tolist()[:2] == [1.0, 0.5]
    assert math.isnan(reduce_columns(values, 2, "min")[2, 0])
    assert reduce_columns(np.array([[0], [2], [1]], dtype=np.int8), 2, "max")[:, 0].tolist() == [2, 1]
    assert reduce_columns(np.arange(5), 2, "last").tolist() == [1, 3, 4]


def test_column_edges_cover_the_snapshot_windows_of_each_column():
    first, last = column_edges(np.array([10, 20, 30, 40, 50]), 2)
    assert first.tolist() == [1, 21, 41] and last.tolist() == [20, 40, 50]


@pytest.mark.parametrize("bad", [0, 3, True, 2.0, "8"])
def test_a_column_budget_that_is_not_an_even_integer_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(InvalidInputError, match="max_columns"):
        ColumnSums(bad)


def test_a_long_run_is_drawn_in_columns_that_show_the_worst_snapshot(tmp_path):
    windows = [[BALANCED]] * 7 + [[COLLAPSED]] + [[BALANCED]] * 8
    view = column_view(load_run(record(tmp_path, windows), max_columns=4))
    assert view.width == 4 and len(view.first_step) == 4
    assert view.top2[:, 0].tolist() == pytest.approx([0.25, 0.95, 0.25, 0.25])
    assert view.expert_share[1, 0, 7] == pytest.approx(300 / 3400)  # 3 balanced windows and the collapsed one


# -- decisions ------------------------------------------------------------------------------------
def test_decisions_give_the_pressure_and_the_bias_per_layer_and_snapshot(tmp_path):
    run = load_run(record(tmp_path, [[BALANCED, COLLAPSED]] * 6, controller=PressureController()))
    decisions = [parse_decision_line(line) for line in (run.run_dir / "decisions.jsonl").read_bytes().splitlines()]
    for decision in decisions:
        position = run.steps.tolist().index(decision.step)
        if decision.pressure is not None:
            assert run.controller.pressure[position, decision.layer_id] >= decision.pressure
    acting = [d for d in decisions if d.action != "none"]
    assert acting and sum(run.controller.actions["adjust"]) == sum(d.action == "adjust" for d in acting)
    last_adjust = [d for d in acting if d.layer_id == 1][-1]
    assert run.controller.bias[run.steps.tolist().index(last_adjust.step), 1] == last_adjust.bias_after
    assert np.isnan(run.controller.pressure[:, 0]).all() or np.nanmax(run.controller.pressure[:, 0]) == 0


def test_a_parquet_run_is_read_into_the_same_report_data_as_its_jsonl_twin(tmp_path):
    pytest.importorskip("pyarrow")
    windows = [[BALANCED, COLLAPSED if position >= 2 else BALANCED] for position in range(8)]
    runs = []
    for storage in ("jsonl", "parquet"):
        with Monitor(
            "run", output_dir=tmp_path / storage, lens=None, controller=PressureController(), storage=storage
        ) as monitor:
            for position, window in enumerate(windows):
                monitor.observe(window, step=10 * (position + 1), train_loss=3.0 - 0.01 * position)
        runs.append(load_run(tmp_path / storage / "run"))
    jsonl, parquet = runs
    assert not (parquet.run_dir / "snapshots.jsonl").exists()
    for name in ("steps", "train_loss", "layer_ids", "n_effective", "top2_share", "states", "expert_tokens"):
        np.testing.assert_array_equal(getattr(jsonl, name), getattr(parquet, name), err_msg=name)
    untimed = [[t.model_copy(update={"timestamp": 0.0}) for t in run.transitions] for run in runs]
    assert untimed[0] == untimed[1] and untimed[0]
    assert jsonl.controller is not None and parquet.controller is not None
    assert jsonl.controller.decisions == parquet.controller.decisions > 0
    np.testing.assert_array_equal(jsonl.controller.pressure, parquet.controller.pressure)
    np.testing.assert_array_equal(jsonl.controller.bias, parquet.controller.bias)


def test_a_decision_line_failing_a_fast_check_is_validated_in_full():
    line = orjson.dumps({"controller": "c", "trigger": "snapshot", "step": 3, "layer_id": 1, "pressure": 0.5})
    assert parse_decision_line(line) == DecisionRow("c", 3, "TRAIN", 1, "none", False, False, 0.5, None)
    with pytest.raises(ValueError):
        parse_decision_line(line.replace(b'"step":3', b'"step":true'))


# -- page encodings and comparisons ------------------------------------------------------------------
def test_expert_loads_encode_no_data_dead_and_the_load_relative_to_balanced():
    shares = np.array([[[0.5, 0.5, 0.0, np.nan]], [[np.nan] * 4]])  # [C=2, L=1, W=4], layer of 3 experts
    codes = encode_loads(shares, np.array([3]), half_range=2.0)
    assert codes.shape == (1, 4, 2)
    assert codes[0, :, 1].tolist() == [0, 0, 0, 0]  # no data
    assert codes[0, 2, 0] == 1 and codes[0, 3, 0] == 0  # dead; beyond the layer's experts
    load = 2 ** ((codes[0, 0, 0] - 2) / 253 * 4 - 2)
    assert load == pytest.approx(1.5, rel=0.02)


def test_expert_columns_are_merged_until_they_fit_the_budget(tmp_path):
    run = load_run(record(tmp_path, [[BALANCED, COLLAPSED]] * 10))
    width, shares = expert_columns(run, max_cells=2 * 8 * 3)
    assert width == 4 and shares.shape == (3, 2, 8)
    np.testing.assert_allclose(shares.sum(axis=2), 1.0)


def test_the_comparison_shows_each_run_and_its_difference_from_the_first(tmp_path):
    healthy = load_run(record(tmp_path, [[BALANCED, BALANCED]] * 8, run_id="healthy"))
    collapsed = load_run(record(tmp_path, [[BALANCED, COLLAPSED]] * 8, run_id="collapsed"))
    rows = {row[0]: row[1:] for row in comparison_rows([healthy, collapsed], ["healthy", "collapsed"])}
    assert rows[""] == ["healthy", "collapsed"]
    assert rows["layers that reached collapse_confirmed"] == ["0", "1 (first at step 50) (+1)"]
    assert rows["layers collapse_confirmed at the end"] == ["0 of 2", "1 of 2 (+1)"]
    assert rows["snapshot steps"] == ["the same in every run"] * 2

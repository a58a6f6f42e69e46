"""The key/value builder and base class that the W&B, MLflow and trackio sinks share: which keys, how many,
which values, the expert-load histograms, alert levels, options. No tracker package is needed here; the
round trips through the real trackers are in ``tests/test_tracker_sinks.py``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chronomoe import InvalidInputError, Monitor, SystemSnapshot
from chronomoe.alerts import AlertState, AlertTransition
from chronomoe.controller import ActuatorChange, ControlDecision
from chronomoe.integrations.trackers import (
    MAX_HISTOGRAM_BINS,
    TrackerSink,
    TrackerSinkConfig,
    decision_scalars,
    expert_load_histogram,
    expert_load_histograms,
    snapshot_scalars,
    transition_alert,
)


def deepseek_sized_snapshot(mode: str = "TRAIN") -> SystemSnapshot:
    """58 MoE layers of 256 experts (DeepSeek-V3), random loads with every expert alive."""
    counts = np.random.default_rng(0).integers(1, 1000, size=(58, 256))
    return SystemSnapshot.from_counts(counts, step=10, mode=mode)


class RecordingSink(TrackerSink):
    """A tracker that keeps what it is given, to test the shared behaviour."""

    def __init__(self, **overrides):
        super().__init__(None, overrides)
        self.logged: list[tuple[int, str, dict, dict]] = []
        self.alerts: list = []
        self.finished = 0

    def _log(self, step, mode, scalars, histograms):
        self.logged.append((step, mode, scalars, histograms))

    def _alert(self, transition, alert):
        self.alerts.append(alert)

    def _finish(self):
        self.finished += 1


# -- how many keys ---------------------------------------------------------------------------------
def test_default_keys_at_58_layers_of_256_experts_are_429_scalars_and_58_histograms():
    snapshot = deepseek_sized_snapshot()
    config = TrackerSinkConfig()
    scalars = snapshot_scalars(snapshot, config)
    # 7 per-layer metrics x 58 layers + 3 aggregated metrics x 7 statistics + 2 alert-state counts
    assert len(scalars) == 7 * 58 + 3 * 7 + 2 == 429
    assert len(expert_load_histograms(snapshot, config)) == 58


def test_per_expert_series_are_opt_in_and_add_one_key_per_layer_and_expert():
    snapshot = deepseek_sized_snapshot()
    per_expert = snapshot_scalars(snapshot, TrackerSinkConfig(per_expert=True))
    assert len(per_expert) - len(snapshot_scalars(snapshot, TrackerSinkConfig())) == 58 * 256 == 14_848
    assert per_expert["chronomoe/expert_share/layer_57/expert_255"] == snapshot.layer(57).utilization_shares[255]


def test_infer_snapshots_log_under_their_own_prefix():
    train, infer = (
        snapshot_scalars(deepseek_sized_snapshot(), TrackerSinkConfig()),
        snapshot_scalars(deepseek_sized_snapshot("INFER"), TrackerSinkConfig()),
    )
    assert not set(train) & set(infer)
    assert {key.replace("chronomoe/infer/", "chronomoe/") for key in infer} == set(train)


# -- which values ----------------------------------------------------------------------------------
def test_scalars_are_the_snapshots_fields_aggregates_and_state_counts(rows):
    monitor = Monitor("keys", lens=None)
    for step in range(1, 6):
        snapshot = monitor.observe([rows.balanced, rows.collapsing], step=step)
    scalars = snapshot_scalars(snapshot, TrackerSinkConfig())
    layer = snapshot.layer(1)
    assert scalars["chronomoe/n_effective/layer_1"] == layer.n_effective
    assert scalars["chronomoe/max_vio/layer_1"] == layer.max_vio
    assert scalars["chronomoe/dead_expert_count/layer_1"] == 5
    assert scalars["chronomoe/alert_state/layer_1"] == 2 and scalars["chronomoe/alert_state/layer_0"] == 0
    assert scalars["chronomoe/top2_share/p95"] == snapshot.aggregates.top2_share.p95
    assert scalars["chronomoe/n_effective/worst_layer"] == 1
    assert (scalars["chronomoe/layers/pre_collapse"], scalars["chronomoe/layers/collapse_confirmed"]) == (0, 1)


def test_a_layer_without_data_logs_its_alert_state_only(rows):
    snapshot = Monitor("empty", lens=None).observe([rows.balanced, rows.no_data], step=1)
    layer_1 = {key for key in snapshot_scalars(snapshot, TrackerSinkConfig()) if key.endswith("/layer_1")}
    assert layer_1 == {"chronomoe/alert_state/layer_1"}
    assert list(expert_load_histograms(snapshot, TrackerSinkConfig())) == ["chronomoe/expert_load/layer_0"]


def test_the_chosen_layer_metrics_and_prefix_are_the_keys(rows):
    snapshot = Monitor("chosen", lens=None).observe([rows.balanced], step=1)
    config = TrackerSinkConfig(prefix="moe/", layer_metrics=("load_cv", "gini"), aggregates=False)
    assert set(snapshot_scalars(snapshot, config)) == {"moe/load_cv/layer_0", "moe/gini/layer_0"}


# -- expert-load histograms ------------------------------------------------------------------------
def test_up_to_512_experts_each_expert_is_one_bin_holding_its_share(rows):
    layer = Monitor("h", lens=None).observe([rows.collapsing], step=1).layer(0)
    values, edges = expert_load_histogram(layer)
    assert edges.tolist() == list(range(9))
    assert values.tolist() == pytest.approx([0.5, 0.45, 0.05, 0, 0, 0, 0, 0])


@settings(max_examples=100, deadline=None)
@given(arrays(np.int64, st.integers(1, 2_000), elements=st.integers(0, 50)).filter(lambda c: c.sum() > 0))
def test_a_histogram_has_at_most_512_bins_covering_every_expert_once_with_its_share(counts):
    layer = SystemSnapshot.from_counts([counts], step=1).layer(0)
    values, edges = expert_load_histogram(layer)
    assert len(values) == len(edges) - 1 <= MAX_HISTOGRAM_BINS
    assert edges[0] == 0 and edges[-1] == len(counts) and np.all(np.diff(edges) > 0)
    shares = counts / counts.sum()
    expected = [shares[int(low) : int(high)].sum() for low, high in itertools.pairwise(edges)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert values.sum() == pytest.approx(1.0)


# -- alerts and decisions --------------------------------------------------------------------------
def test_transitions_are_error_on_collapse_warn_on_rising_and_info_on_stepping_down(rows):
    monitor = Monitor("levels", lens=None)
    transitions = []
    monitor.bus.subscribe("transition", transitions.append)
    for step, row in enumerate([rows.collapsing] * 5 + [rows.balanced], start=1):
        monitor.observe([row], step=step)
    alerts = [transition_alert(transition) for transition in transitions]
    assert [(t.source, t.dest) for t in transitions] == [
        (AlertState.NOMINAL, AlertState.PRE_COLLAPSE),
        (AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED),
        (AlertState.COLLAPSE_CONFIRMED, AlertState.NOMINAL),
    ]
    assert [alert.level for alert in alerts] == ["WARN", "ERROR", "INFO"]
    assert alerts[1].title == "ChronoMoE layer 0: collapse_confirmed"
    assert alerts[1].text.startswith("step 5: layer 0 pre_collapse -> collapse_confirmed (confirm); Neff=")


def test_an_alert_title_stays_under_w_and_bs_64_characters_even_for_layer_one_billion_in_infer_mode():
    longest = AlertTransition(
        run_id="r",
        step=1,
        mode="INFER",
        layer_id=10**9,
        source=AlertState.PRE_COLLAPSE,
        dest=AlertState.COLLAPSE_CONFIRMED,
        trigger="confirm",
        pre_streak=0,
        collapse_streak=5,
        healthy_streak=0,
        metrics={"n_effective": 1.0, "n_experts": 8, "top2_share": 1.0, "dead_expert_count": 6},
    )
    assert len(transition_alert(longest).title) < 64


def test_a_layer_decision_logs_its_pressure_and_change_and_a_model_decision_nothing():
    change = ActuatorChange(
        max_abs_change=0.25, l1_change=1.0, max_abs_before=0, max_abs_after=0.25, mean_after=0, clamped=0
    )
    decision = ControlDecision(controller="c", trigger="snapshot", step=7, layer_id=3, pressure=0.5, change=change)
    assert decision_scalars(decision, TrackerSinkConfig()) == {
        "chronomoe/decision/pressure/layer_3": 0.5,
        "chronomoe/decision/max_abs_change/layer_3": 0.25,
    }
    assert decision_scalars(decision.model_copy(update={"layer_id": None}), TrackerSinkConfig()) == {}


# -- the base class --------------------------------------------------------------------------------
def test_a_sink_logs_each_snapshot_at_its_step_and_histograms_at_the_first_and_every_nth(rows):
    monitor = Monitor("every", lens=None)
    sink = RecordingSink(histogram_every=3)
    monitor.bus.connect(sink)
    for step in range(1, 8):
        monitor.observe([rows.balanced], step=step * 10)
    assert [step for step, *_ in sink.logged] == [10, 20, 30, 40, 50, 60, 70]
    assert [step for step, _, _, histograms in sink.logged if histograms] == [10, 40, 70]


def test_alerts_and_decisions_are_logged_only_when_asked(rows):
    monitor = Monitor("opt", lens=None)
    quiet, verbose = RecordingSink(alerts=False), RecordingSink(decisions=True)
    monitor.bus.connect(quiet)
    monitor.bus.connect(verbose)
    for step in range(1, 4):
        monitor.observe([rows.collapsing], step=step)
    monitor.bus.publish("decision", ControlDecision(controller="c", trigger="snapshot", step=3, layer_id=0, pressure=1))
    assert (len(quiet.alerts), len(verbose.alerts)) == (0, 1)
    assert verbose.logged[-1] == (3, "TRAIN", {"chronomoe/decision/pressure/layer_0": 1.0}, {})
    assert len(quiet.logged) == 3


def test_a_closed_sink_refuses_publications_and_closing_twice_finishes_once(rows):
    monitor = Monitor("closed", lens=None, strict_handlers=True)
    with RecordingSink() as sink:
        connection = monitor.bus.connect(sink)
    assert sink.closed and sink.finished == 1
    sink.close()
    assert sink.finished == 1
    with pytest.raises(InvalidInputError, match="after close"):
        monitor.observe([rows.balanced], step=1)
    connection.disconnect()
    monitor.observe([rows.balanced], step=2)
    assert len(sink.logged) == 0


@pytest.mark.parametrize(
    ("option", "value", "field", "named_value"),
    [
        ("histogram_every", 0, "histogram_every", 0),
        ("prefix", "chronomoe[0]/", "prefix", "chronomoe[0]/"),
        ("layer_metrics", ("n_effective", "neff"), "layer_metrics.1", "neff"),
        ("per_experts", True, "per_experts", True),
    ],
)
def test_a_bad_option_is_refused_naming_the_field_and_value(option, value, field, named_value):
    with pytest.raises(InvalidInputError) as refused:
        RecordingSink(**{option: value})
    assert (refused.value.field, refused.value.value) == (field, named_value)


def test_the_key_table_in_the_module_docstring_parses():
    from test_docstrings import simple_tables, table_problems

    import chronomoe.integrations.trackers as trackers

    (table,) = simple_tables(trackers.__doc__)
    assert table_problems(table) == []


def test_the_run_config_to_log_is_the_manifest_the_run_folder_holds(tmp_path):
    import orjson

    monitor = Monitor("manifest", output_dir=tmp_path, lens=None, underuse_ratio=0.2)
    written = orjson.loads((tmp_path / "manifest" / "run_manifest.json").read_bytes())
    config = monitor.manifest()
    assert {**config, "created_at": None} == {**written, "created_at": None}
    assert config["monitor_config"]["underuse_ratio"] == 0.2
    monitor.close()

"""Golden scenarios (``specs/scenarios/*.json``): counts per layer per snapshot in, metrics and alerts out.

Each file holds ``name``, ``description``, optional ``rules`` (overrides of the
default rules), ``metric_tolerance`` (absolute; the expected metrics are
rounded to 4 decimals) and ``snapshots``: ``step``, ``counts`` (one row per
layer, rows may differ in length) and ``expected`` per-layer metrics, alert
state and alert name, plus the snapshot's transitions.

The expected values were written by reasoning about the seed's rules; the
first two tests check them against the plain-Python reference models of
``conftest.py`` (so a typo in a file fails here, not silently in the
library), the last two replay every file through the library's two paths.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from chronomoe import AlertRules, Monitor, SystemSnapshot

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "specs" / "scenarios"
SCENARIO_FILES = sorted(SCENARIO_DIR.glob("*.json"))
FLOAT_METRICS = ("entropy", "n_effective", "top2_share", "gini")
EXACT_FIELDS = ("layer_id", "n_experts", "no_data", "token_count", "dead_expert_count", "nearly_dead_count")
REQUIRED = {
    "healthy",
    "binary_collapse",
    "slow_drift",
    "flapping_under_persistence",
    "recovery",
    "no_data_gap_mid_streak",
    "two_expert_layer",
    "mixed_expert_counts",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def rules_of(scenario: dict) -> AlertRules:
    return AlertRules(**scenario.get("rules", {}))


scenarios = pytest.mark.parametrize("path", SCENARIO_FILES, ids=[path.stem for path in SCENARIO_FILES])


def test_the_required_scenarios_exist():
    names = {path.stem for path in SCENARIO_FILES}
    assert names >= REQUIRED
    assert any("rules" in load(path) for path in SCENARIO_FILES), "no scenario with non-default rules"


@scenarios
def test_scenario_file_is_well_formed(path):
    scenario = load(path)
    assert scenario["name"] == path.stem and scenario["description"]
    assert set(scenario) <= {"name", "description", "rules", "metric_tolerance", "snapshots"}
    assert scenario["snapshots"]
    for snapshot in scenario["snapshots"]:
        layers = snapshot["expected"]["layers"]
        assert [layer["layer_id"] for layer in layers] == list(range(len(snapshot["counts"])))
        assert [layer["n_experts"] for layer in layers] == [len(row) for row in snapshot["counts"]]


# -- the files against independent reference models ---------------------------------------------


@scenarios
def test_expected_metrics_match_an_independent_computation(reference_metrics, path):
    scenario = load(path)
    tolerance = scenario["metric_tolerance"]
    for snapshot in scenario["snapshots"]:
        for row, expected in zip(snapshot["counts"], snapshot["expected"]["layers"], strict=True):
            computed = reference_metrics(row)
            for name in EXACT_FIELDS[2:]:
                assert expected[name] == computed[name], (snapshot["step"], expected["layer_id"], name)
            for name in FLOAT_METRICS:
                if computed[name] is None:
                    assert expected[name] is None
                else:
                    assert math.isclose(expected[name], computed[name], abs_tol=tolerance), (snapshot["step"], name)


def alert_name(state: str) -> str | None:
    return {"nominal": None, "pre_collapse": "PRE_COLLAPSE", "collapse_confirmed": "COLLAPSE_CONFIRMED"}[state]


@scenarios
def test_expected_alerts_match_the_reference_machine(reference_metrics, reference_alert_run, path):
    scenario = load(path)
    rules = rules_of(scenario)
    n_layers = len(scenario["snapshots"][0]["counts"])
    for layer_id in range(n_layers):
        conditions = []
        for snapshot in scenario["snapshots"]:
            row = snapshot["counts"][layer_id]
            metrics = reference_metrics(row)
            if metrics["no_data"]:
                conditions.append((False, False, True))
                continue
            pre = metrics["n_effective"] < rules.neff_ratio * len(row) or (
                metrics["top2_share"] > rules.pre_top2 and len(row) > 2
            )
            collapse = (
                metrics["dead_expert_count"] >= rules.confirm_min_dead and metrics["top2_share"] > rules.confirm_top2
            )
            conditions.append((pre, collapse, False))
        previous = "nominal"
        for snapshot, reference in zip(scenario["snapshots"], reference_alert_run(conditions, rules), strict=True):
            expected = snapshot["expected"]["layers"][layer_id]
            assert expected["alert_state"] == reference["state"], (snapshot["step"], layer_id)
            assert expected["alert"] == (None if expected["no_data"] else alert_name(reference["state"]))
            moves = [t for t in snapshot["expected"]["transitions"] if t["layer_id"] == layer_id]
            changed = reference["state"] != previous
            move = {"layer_id": layer_id, "source": previous, "dest": reference["state"]}
            assert moves == ([move] if changed else [])
            previous = reference["state"]


# -- replay through the library -------------------------------------------------------------------


def assert_snapshot_matches(snapshot: SystemSnapshot, expected: dict, tolerance: float, transitions) -> None:
    for layer, want in zip(snapshot.layers, expected["layers"], strict=True):
        where = f"step {snapshot.step} layer {want['layer_id']}"
        for name in EXACT_FIELDS:
            assert getattr(layer, name) == want[name], f"{where}: {name}"
        for name in FLOAT_METRICS:
            value = getattr(layer, name)
            if want[name] is None:
                assert value is None, f"{where}: {name}"
            else:
                assert math.isclose(value, want[name], abs_tol=tolerance), f"{where}: {name}={value}"
        assert layer.alert_state.value == want["alert_state"], where
    alerts = [(want["layer_id"], want["alert"]) for want in expected["layers"] if want["alert"] is not None]
    assert len(snapshot.alerts) == len(alerts), f"step {snapshot.step}: {snapshot.alerts}"
    for text, (layer_id, name) in zip(snapshot.alerts, alerts, strict=True):
        assert text.startswith(name + ":") and re.search(rf"\blayer {layer_id}\b", text), text
    assert [(t.layer_id, t.source.value, t.dest.value) for t in transitions] == [
        (t["layer_id"], t["source"], t["dest"]) for t in expected["transitions"]
    ]


@scenarios
def test_replay_through_from_counts_with_alert_history(path):
    scenario = load(path)
    alert_history: dict = {}
    for snapshot in scenario["snapshots"]:
        built = SystemSnapshot.from_counts(
            snapshot["counts"],
            step=snapshot["step"],
            run_id="golden",
            alert_history=alert_history,
            rules=rules_of(scenario),
        )
        assert_snapshot_matches(built, snapshot["expected"], scenario["metric_tolerance"], built.transitions)


@scenarios
def test_replay_through_monitor_observe(path):
    scenario = load(path)
    monitor = Monitor("golden", rules=rules_of(scenario))
    published = []
    monitor.bus.subscribe("transition", published.append)
    for snapshot in scenario["snapshots"]:
        published.clear()
        built = monitor.observe(snapshot["counts"], step=snapshot["step"])
        assert_snapshot_matches(built, snapshot["expected"], scenario["metric_tolerance"], published)

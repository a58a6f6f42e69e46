"""PressureController: its safety laws over arbitrary snapshot sequences (hypothesis) and each guard by example.

The controller is fed through a Monitor's ``observe`` (counts in, decisions
out on the bus), so it acts on a host copy of the bias, as in dry runs and
runs without a model; the tests on real routers are in
``tests/test_governance_models.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import AlertRules, Monitor
from chronomoe.controller import ControlDecision, PressureConfig, PressureController
from chronomoe.controller.pressure import FREEZE_VARIABLE
from chronomoe.controller.snapshot_arrays import fit_into_box

N_EXPERTS = 8
BALANCED = [100] * N_EXPERTS
COLLAPSED = [700, 250, 20, 10, 10, 5, 5, 0]  # Top2 0.95, 1 dead expert
CONCENTRATED = [400, 300, 50, 50, 50, 50, 50, 50]  # Top2 0.70, MaxVio 2.2: outside the band, no alert condition


def run(controller: PressureController, windows: list[list[list[int]]], rules: AlertRules | None = None):
    """Observe ``windows`` (``[snapshot][layer][expert]``); the decisions of each snapshot and the bias after it."""
    monitor = Monitor("pressure", rules=rules or AlertRules(), controller=controller, lens=None)
    decisions: list[ControlDecision] = []
    monitor.bus.subscribe("decision", decisions.append)
    history = []
    for step, window in enumerate(windows, start=1):
        decisions.clear()
        monitor.observe(window, step=step)
        history.append((list(decisions), controller.actuator.read()))
    return history


# -- laws over arbitrary snapshot sequences ---------------------------------------------------------

counts_rows = st.lists(st.integers(0, 1000), min_size=N_EXPERTS, max_size=N_EXPERTS).filter(lambda row: sum(row) > 0)
windows = st.integers(1, 3).flatmap(
    lambda n_layers: st.lists(st.lists(counts_rows, min_size=n_layers, max_size=n_layers), min_size=1, max_size=25)
)
configs = st.builds(
    PressureConfig,
    mode=st.sampled_from(["alert", "continuous"]),
    rate=st.floats(0.001, 0.5),
    max_step=st.floats(0.001, 0.2),
    max_bias=st.floats(0.01, 2.0),
    tolerance=st.floats(0.0, 2.0),
    hold_for=st.integers(0, 4),
    relax_rate=st.sampled_from([0.0, 0.1, 0.5]),
    relax_after=st.integers(1, 3),
)
fast_rules = AlertRules(pre_persistence=1, confirm_persistence=2)


@settings(max_examples=30, deadline=None)
@given(configs, windows)
def test_the_bias_stays_within_its_bound_and_moves_at_most_max_step_per_decision(config, sequence):
    history = run(PressureController(config), sequence, fast_rules)
    before = np.zeros_like(history[0][1])
    for _, after in history:
        assert np.abs(after).max() <= config.max_bias * (1 + 1e-9)
        assert np.abs(after - before).max() <= config.max_step * (1 + 1e-9)
        before = after


@settings(max_examples=30, deadline=None)
@given(configs, windows)
def test_the_bias_stays_mean_centred(config, sequence):
    for _, bias in run(PressureController(config), sequence, fast_rules):
        assert np.abs(bias.sum(axis=1)).max() <= 1e-9


@settings(max_examples=30, deadline=None)
@given(configs.filter(lambda config: config.mode == "alert"), windows)
def test_no_layer_is_adjusted_while_nominal_outside_the_continuous_mode(config, sequence):
    config = config.model_copy(update={"hold_for": 0})
    for decisions, _ in run(PressureController(config), sequence, fast_rules):
        for decision in decisions:
            if decision.alert_state == "nominal":
                assert decision.action != "adjust", decision.reason


@settings(max_examples=25, deadline=None)
@given(configs, windows)
def test_decisions_are_a_deterministic_function_of_their_inputs(config, sequence):
    first = run(PressureController(config), sequence, fast_rules)
    second = run(PressureController(config), sequence, fast_rules)

    def inputs_and_outputs(history):  # a decision's timestamp is its snapshot's, an input that differs per run
        return [[decision.model_dump(exclude={"timestamp"}) for decision in decisions] for decisions, _ in history]

    assert inputs_and_outputs(first) == inputs_and_outputs(second)


@settings(max_examples=25, deadline=None)
@given(configs, windows, st.data())
def test_a_controller_resumed_from_its_state_dict_decides_as_if_never_interrupted(config, sequence, data):
    cut = data.draw(st.integers(0, len(sequence)))
    whole = run(PressureController(config), sequence, fast_rules)
    interrupted = PressureController(config)
    monitor = Monitor("pressure", rules=fast_rules, controller=interrupted, lens=None)
    for step, window in enumerate(sequence[:cut], start=1):
        monitor.observe(window, step=step)
    checkpoint = monitor.state_dict()

    resumed = PressureController(config)
    monitor = Monitor("pressure", rules=fast_rules, controller=resumed, lens=None)
    monitor.load_state_dict(checkpoint)
    decisions: list[ControlDecision] = []
    monitor.bus.subscribe("decision", decisions.append)
    for step, window in enumerate(sequence[cut:], start=cut + 1):
        decisions.clear()
        monitor.observe(window, step=step)
        expected = whole[step - 1][0]
        assert [d.model_copy(update={"timestamp": 0.0}) for d in decisions] == [
            d.model_copy(update={"timestamp": 0.0}) for d in expected
        ]
        assert np.array_equal(resumed.actuator.read(), whole[step - 1][1])


# -- by example ---------------------------------------------------------------------------------------


def test_a_collapsing_layer_is_adjusted_towards_its_under_used_experts_and_a_balanced_one_is_left_alone():
    history = run(PressureController(), [[BALANCED, COLLAPSED]] * 6)
    decisions, bias = history[-1]
    balanced, collapsing = decisions
    assert balanced.action == "none" and "within tolerance" in balanced.reason
    assert collapsing.action == "adjust" and collapsing.applied is False  # no model: a host copy of the bias
    assert bias[1, 0] < 0 and bias[1, 7] > 0  # the busiest expert pushed down, the dead one up
    assert not bias[0].any()


def test_the_pressure_is_the_largest_of_the_documented_terms():
    (decisions, _), *_ = run(PressureController(mode="continuous"), [[COLLAPSED]])
    (decision,) = decisions
    shares = np.array(COLLAPSED) / sum(COLLAPSED)
    top2_excess = (shares[:2].sum() - 0.75) / 0.25
    neff = np.exp(-np.sum(shares[shares > 0] * np.log(shares[shares > 0])))
    neff_deficit = (0.6 * 8 - neff) / (0.6 * 8 - 1)
    vio_excess = (8 * shares.max() - 1 - 0.25) / (8 - 1 - 0.25)
    assert decision.pressure == pytest.approx(min(1.0, max(top2_excess, neff_deficit, vio_excess, 1 / 8)))


def test_every_decision_names_its_controller_policy_and_layer_and_says_why():
    (decisions, _), *_ = run(PressureController(), [[BALANCED, COLLAPSED]])
    config_hash = PressureConfig().digest()
    assert [(d.controller, d.config_hash, d.layer_id, d.trigger) for d in decisions] == [
        ("pressure", config_hash, 0, "snapshot"),
        ("pressure", config_hash, 1, "snapshot"),
    ]
    assert all(d.reason and d.metrics and d.actuator == "router_bias" and d.change is not None for d in decisions)


def test_the_alert_mode_waits_for_the_alert_and_holds_on_after_it():
    rules = AlertRules(pre_persistence=2)
    history = run(PressureController(hold_for=2), [[COLLAPSED]] * 3 + [[CONCENTRATED]] * 4, rules)
    actions = [decisions[0].action for decisions, _ in history]
    # snapshot 1: nominal (pre streak 1); 2-3: pre_collapse/collapse; 4-5 nominal but held; 6-7 no longer held
    assert actions[0] == "none" and actions[1:3] == ["adjust", "adjust"]
    assert actions[3:5] == ["adjust", "adjust"] and actions[5:] == ["none", "none"]


def test_the_continuous_mode_acts_on_every_layer_outside_the_band():
    history = run(PressureController(mode="continuous"), [[CONCENTRATED]])
    assert history[0][0][0].action == "adjust"


def test_inside_the_tolerance_band_nothing_is_done():
    nearly = [110, 100, 100, 100, 100, 100, 100, 90]  # MaxVio 0.1
    history = run(PressureController(mode="continuous", tolerance=0.2), [[nearly]])
    assert history[0][0][0].action == "none" and "within tolerance" in history[0][0][0].reason


def test_warm_up_snapshots_are_observed_without_acting():
    history = run(PressureController(mode="continuous", warmup=2), [[COLLAPSED]] * 3)
    assert [decisions[0].action for decisions, _ in history] == ["none", "none", "adjust"]
    assert "warm-up: snapshot 1 of 2" in history[0][0][0].reason


def test_layers_outside_the_allow_list_are_never_touched():
    history = run(PressureController(mode="continuous", layers=[1]), [[COLLAPSED, COLLAPSED]] * 3)
    decisions, bias = history[-1]
    assert decisions[0].action == "none" and decisions[0].reason == "layer not in the allow-list"
    assert not bias[0].any() and bias[1].any()


def test_infer_snapshots_get_no_decision():
    controller = PressureController(mode="continuous")
    monitor = Monitor("pressure", controller=controller, lens=None)
    decisions = []
    monitor.bus.subscribe("decision", decisions.append)
    monitor.observe([COLLAPSED], step=1, mode="INFER")
    assert decisions == []


def test_a_frozen_controller_decides_and_says_so_but_changes_nothing(monkeypatch):
    controller = PressureController(mode="continuous")
    controller.freeze("incident 42")
    history = run(controller, [[COLLAPSED]] * 2)
    assert not history[-1][1].any()
    assert history[-1][0][0].reason.startswith("incident 42: would adjust")
    controller.unfreeze()
    monkeypatch.setenv(FREEZE_VARIABLE, "1")
    assert controller.frozen == f"frozen by {FREEZE_VARIABLE}"
    monkeypatch.setenv(FREEZE_VARIABLE, "0")
    assert controller.frozen is None


def test_a_dry_run_decides_exactly_as_an_applying_run_and_says_it_did_not_apply():
    applying = run(PressureController(mode="continuous"), [[COLLAPSED]] * 3)
    dry = run(PressureController(mode="continuous", dry_run=True), [[COLLAPSED]] * 3)
    for (applied, bias), (recommended, dry_bias) in zip(applying, dry, strict=True):
        assert np.array_equal(bias, dry_bias)
        assert [d.change for d in applied] == [d.change for d in recommended]
        assert all(d.dry_run and not d.applied and d.reason.startswith("dry run, not applied") for d in recommended)


def test_an_adjustment_followed_by_more_pressure_backs_off_and_repeated_harm_makes_it_abstain():
    worse = [COLLAPSED, [800, 200, 0, 0, 0, 0, 0, 0], [950, 50, 0, 0, 0, 0, 0, 0], [1000, 0, 0, 0, 0, 0, 0, 0]]
    controller = PressureController(mode="continuous", abstain_after=3, harm_margin=0.1)  # MaxVio 4.6, 5.4, 6.6, 7.0
    history = run(controller, [[w] for w in worse] + [[COLLAPSED]] * 2)
    reasons = [decisions[0].reason for decisions, _ in history]
    assert "backed off" in reasons[1] and "step scale 0.50" in reasons[1]
    assert "step scale 0.25" in reasons[2]
    assert history[3][0][0].action == "abstain" and "3 adjustments in a row raised MaxVio" in reasons[3]
    assert history[4][0][0].action == "abstain" and np.array_equal(history[4][1], history[3][1])
    controller.reset_abstention(0)
    assert controller.state_dict()["layer_state"]["abstained"] == [False]


def test_relaxation_shrinks_the_bias_of_a_balanced_layer_and_stops_when_the_margin_is_lost():
    controller = PressureController(mode="continuous", relax_rate=0.5, relax_after=2, tolerance=0.5, max_step=1.0)
    sequence = [[COLLAPSED]] * 3 + [[BALANCED]] * 3 + [[[130, 100, 100, 100, 100, 100, 100, 70]]] * 2
    history = run(controller, sequence)
    magnitudes = [np.abs(bias).max() for _, bias in history]
    actions = [decisions[0].action for decisions, _ in history]
    assert actions[3] == "none" and actions[4:6] == ["relax", "relax"]  # two balanced snapshots first
    assert magnitudes[4] == pytest.approx(magnitudes[3] * 0.5) and magnitudes[5] == pytest.approx(magnitudes[3] * 0.25)
    assert actions[6:] == ["none", "none"] and magnitudes[6] == magnitudes[5]  # MaxVio 0.3 > 0.5 * 0.5: stopped


def test_fit_into_box_holds_experts_at_their_bound_and_recentres_the_rest():
    bias = np.array([[0.5, -0.5, 0.0, 0.0]])
    desired = np.array([[0.3, -0.1, -0.1, -0.1]])  # pushes expert 0 further up
    change = fit_into_box(desired, bias, np.array([4]), max_step=0.2, max_bias=0.5)
    assert change[0, 0] == 0.0
    assert change.sum() == pytest.approx(0.0, abs=1e-15)
    assert np.abs(change).max() <= 0.2 and np.abs(bias + change).max() <= 0.5


def box_arrays(box: tuple[list[list[float]], list[list[float]], list[int]]) -> tuple[np.ndarray, ...]:
    """A drawn box as ``(desired, bias, n_experts, real)``: a mean-zero wish and a bias within the bound 1.0
    (experts at it included) in rows padded to 6 experts, each row's expert count, and the mask of real experts."""
    desired_rows, bias_rows, widths = box
    n_experts = np.array(widths, dtype=np.float64)
    real = np.arange(6)[None, :] < n_experts[:, None]
    desired = np.where(real, np.array(desired_rows), 0.0)
    desired = np.where(real, desired - desired.sum(axis=1, keepdims=True) / n_experts[:, None], 0.0)
    bias = np.where(real, np.array(bias_rows), 0.0)
    bias = np.where(real, bias - bias.sum(axis=1, keepdims=True) / n_experts[:, None], 0.0).clip(-1.0, 1.0)
    return desired, bias, n_experts, real


boxes = st.integers(1, 4).flatmap(
    lambda rows: st.tuples(
        st.lists(st.lists(st.floats(-1, 1), min_size=6, max_size=6), min_size=rows, max_size=rows),
        st.lists(
            st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.3, 1.0]), min_size=6, max_size=6), min_size=rows, max_size=rows
        ),
        st.lists(st.integers(2, 6), min_size=rows, max_size=rows),
    ).map(box_arrays)
)


@settings(max_examples=200, deadline=None)
@given(boxes, st.sampled_from([0.05, 0.3, 2.0]))
def test_fit_into_box_keeps_both_bounds_the_mean_and_never_pushes_an_expert_at_its_bound_outwards(box, max_step):
    """For any mean-zero wish and any bias within the bound (experts at the bound included), in padded rows."""
    desired, bias, n_experts, real = box
    change = fit_into_box(desired, bias, n_experts, max_step=max_step, max_bias=1.0)
    assert np.abs(change).max() <= max_step * (1 + 1e-12)
    assert np.abs(bias + change).max() <= 1.0 + 1e-12
    assert np.abs(change.sum(axis=1)).max() <= 1e-12
    assert not change[~real].any()
    at_bound = np.abs(bias) >= 1.0
    assert not (at_bound & (change * bias > 0)).any()


@settings(max_examples=100, deadline=None)
@given(boxes, st.sampled_from([0.05, 0.3, 2.0]))
def test_fit_into_box_in_place_in_a_used_workspace_gives_the_same_change_bitwise(box, max_step):
    """``out=desired`` and a scratch buffer full of leftovers change nothing but where the result is written."""
    desired, bias, n_experts, _ = box
    kept = desired.copy()
    fresh = fit_into_box(desired, bias, n_experts, max_step=max_step, max_bias=1.0)
    assert np.array_equal(desired, kept)  # without ``out``, the wish is kept
    leftovers = np.full_like(desired, 7.0)
    in_place = fit_into_box(desired, bias, n_experts, max_step=max_step, max_bias=1.0, out=desired, scratch=leftovers)
    assert in_place is desired
    assert np.array_equal(in_place, fresh)


def test_a_bad_policy_is_refused_naming_the_field(assert_rejected):
    assert_rejected(lambda: PressureController(max_step=0), "max_step")
    assert_rejected(lambda: PressureController(mode="sometimes"), "mode")


def test_a_state_dict_of_another_policy_is_refused(assert_rejected):
    state = PressureController(rate=0.1).state_dict()
    assert_rejected(lambda: PressureController(rate=0.2).load_state_dict(state), "state.config")

"""Lens and controller stubs: identity lens, LensState following the bus, no-op and user controllers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chronomoe import AlertRules, ControlDecision, Controller, LensState, Monitor, NoOpController
from chronomoe.lens import ChronoLens, IdentityLens
from chronomoe.topics import monitor_bus

# -- IdentityLens -----------------------------------------------------------------------------------


def test_identity_lens_returns_the_very_same_tensor():
    x = torch.randn(4, 16)
    assert IdentityLens()(x, LensState(), layer_id=3) is x


def test_identity_lens_keeps_the_autograd_graph():
    weight = torch.randn(16, requires_grad=True)
    x = torch.ones(4, 16) * weight * 3.0
    out = IdentityLens()(x, None, 0)
    assert out is x and out.grad_fn is x.grad_fn
    out.sum().backward()
    assert torch.equal(weight.grad, torch.full((16,), 12.0))  # d/dw of sum over 4 rows of 3w


def test_identity_lens_state_defaults_to_its_own():
    lens = IdentityLens()
    x = torch.ones(2)
    assert lens(x) is x
    assert lens.state == LensState()


def test_chrono_lens_requires_a_forward():
    with pytest.raises(TypeError):
        ChronoLens()


# -- LensState ---------------------------------------------------------------------------------------


def test_lens_state_defaults_to_no_signal():
    state = LensState()
    assert (state.step, state.mode, state.pressure, state.heat, state.forgetting) == (0, "TRAIN", 0.0, 0.0, 0.0)
    assert (state.layer_metrics, state.meta) == ({}, {})


finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | finite | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
"""Values that JSON carries without loss (lists, not tuples)."""


@settings(max_examples=50)
@given(
    st.integers(0, 2**62),
    st.sampled_from(["TRAIN", "INFER"]),
    finite,
    finite,
    finite,
    st.dictionaries(st.integers(0, 10**4), st.dictionaries(st.text(max_size=20), st.none() | st.integers() | finite)),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)
def test_lens_state_json_round_trip_is_lossless(step, mode, pressure, heat, forgetting, layer_metrics, meta):
    state = LensState(
        step=step,
        mode=mode,
        pressure=pressure,
        heat=heat,
        forgetting=forgetting,
        layer_metrics=layer_metrics,
        meta=meta,
    )
    assert LensState.model_validate_json(state.model_dump_json()) == state


def test_a_followed_lens_state_survives_json(rows):
    monitor = Monitor("run")
    monitor.observe([rows.collapsing, rows.no_data], step=4)
    state = monitor.lens.state
    restored = LensState.model_validate_json(state.model_dump_json())
    assert restored == state
    assert list(restored.layer_metrics) == [0, 1]  # integer layer ids survive JSON's string keys


def test_the_lens_state_follows_every_snapshot(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1))
    for step, counts in enumerate([[rows.balanced, rows.concentrated], [rows.collapsing, rows.no_data]] * 2):
        snapshot = monitor.observe(counts, step=10 * step)
        state = monitor.lens.state
        assert (state.step, state.mode) == (snapshot.step, "TRAIN")
        assert state.layer_metrics == {layer.layer_id: layer.metrics() for layer in snapshot.layers}


def test_a_lens_connected_to_any_bus_follows_its_decisions():
    bus = monitor_bus()
    lens = IdentityLens()
    bus.connect(lens)
    bus.publish("decision", ControlDecision(controller="user", trigger="snapshot", step=3, heat=0.5))
    assert (lens.state.heat, lens.state.pressure) == (0.5, 0.0)


# -- NoOpController ------------------------------------------------------------------------------------


def test_the_noop_controller_is_a_controller():
    assert isinstance(NoOpController(), Controller)


def test_the_noop_controller_decides_none_for_every_snapshot_and_transition(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1, confirm_persistence=2))
    decisions = []
    monitor.bus.subscribe("decision", decisions.append)
    for step in range(3):
        decisions.clear()
        snapshot = monitor.observe([rows.collapsing, rows.balanced, rows.collapsing], step=step)
        expected = [("transition", t.layer_id) for t in snapshot.transitions] + [("snapshot", None)]
        assert [(d.trigger, d.layer_id) for d in decisions] == expected
        assert all(d.action == "none" and d.controller == "noop" and d.step == step for d in decisions)
        assert all(d.pressure is None and d.heat is None and d.forgetting is None for d in decisions)
    assert monitor.controller.decisions == 2 + 1 + 2 + 1 + 0 + 1


def test_a_noop_decision_leaves_the_lens_signals_unchanged(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1))
    monitor.observe([rows.collapsing], step=0)
    assert (monitor.lens.state.pressure, monitor.lens.state.heat, monitor.lens.state.forgetting) == (0.0, 0.0, 0.0)


@settings(max_examples=100)
@given(
    st.text(max_size=10),
    st.sampled_from(["snapshot", "transition"]),
    st.integers(0, 2**62),
    st.sampled_from(["TRAIN", "INFER"]),
    st.none() | st.integers(0, 10**4),
    st.text(max_size=10),
    st.none() | finite,
    st.none() | finite,
    st.none() | finite,
    st.text(max_size=30),
    st.floats(0, 4e9),
)
def test_control_decision_json_round_trip_is_lossless(
    controller, trigger, step, mode, layer_id, action, pressure, heat, forgetting, reason, timestamp
):
    decision = ControlDecision(
        controller=controller,
        trigger=trigger,
        step=step,
        mode=mode,
        layer_id=layer_id,
        action=action,
        pressure=pressure,
        heat=heat,
        forgetting=forgetting,
        reason=reason,
        timestamp=timestamp,
    )
    assert ControlDecision.model_validate_json(decision.model_dump_json()) == decision


def test_a_monitor_can_run_without_controller_and_lens(rows):
    monitor = Monitor("run", controller=None, lens=None)
    decisions = []
    monitor.bus.subscribe("decision", decisions.append)
    monitor.observe([rows.balanced], step=0)
    assert decisions == [] and monitor.lens is None


# -- a user-written controller plugs in through the bus alone -------------------------------------------


class PressureController:
    """Toy controller: raises pressure by ``step_size`` each time a layer enters pre_collapse."""

    name = "pressure"

    def __init__(self, step_size: float = 0.5) -> None:
        self.step_size = step_size
        self.pressure = 0.0

    def on_snapshot(self, snapshot) -> None:
        return None

    def on_transition(self, transition) -> ControlDecision | None:
        if transition.dest != "pre_collapse":
            return None
        self.pressure += self.step_size
        return ControlDecision(
            controller=self.name,
            trigger="transition",
            step=transition.step,
            layer_id=transition.layer_id,
            action="raise_pressure",
            pressure=self.pressure,
            reason=f"layer {transition.layer_id} pre_collapse",
        )


class TinyRouter(nn.Module):
    """A router whose input passes through a lens: logits = W @ lens(x)."""

    def __init__(self, lens: ChronoLens) -> None:
        super().__init__()
        self.lens = lens
        self.gate = nn.Linear(16, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.lens(x, self.lens.state, layer_id=0))


def test_a_user_controller_pressure_reaches_the_lens_state_and_identity_outputs_stay_unchanged(rows):
    torch.manual_seed(0)
    monitor = Monitor("run", rules=AlertRules(pre_persistence=2))
    controller = PressureController()
    assert isinstance(controller, Controller)
    monitor.set_controller(controller)
    router = TinyRouter(monitor.lens)
    x = torch.randn(4, 16)
    before = router(x).detach().clone()

    pressures = []
    for step, counts in enumerate([[rows.concentrated, rows.balanced]] * 2 + [[rows.balanced, rows.concentrated]] * 2):
        monitor.observe(counts, step=step)
        pressures.append(monitor.lens.state.pressure)
        assert torch.equal(router(x), before)
    assert pressures == [0.0, 0.5, 0.5, 1.0]
    assert monitor.lens.state.step == 3

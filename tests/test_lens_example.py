"""examples/temperature_lens.py: a parameterised lens on the router path, driven by the controller's pressure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from chronomoe import ControlDecision, Monitor
from chronomoe.lens import LensState
from chronomoe.toy_model import DemoConfig, DemoMoEModel, batch_at, make_corpus

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "temperature_lens.py"


@pytest.fixture(scope="module")
def temperature_lens():
    spec = importlib.util.spec_from_file_location("temperature_lens", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TemperatureLens


def test_without_pressure_the_lens_returns_its_input_itself(temperature_lens):
    x = torch.randn(4, 8)
    assert temperature_lens()(x, LensState(), layer_id=0) is x


def test_under_pressure_the_lens_divides_by_one_plus_strength_times_pressure(temperature_lens):
    x = torch.randn(4, 8)
    state = LensState(layer_pressure={1: 0.5})
    torch.testing.assert_close(temperature_lens(strength=2.0)(x, state, layer_id=1), x / 2.0)
    assert temperature_lens()(x, state, layer_id=0) is x


def test_attached_the_lens_reads_the_pressure_decided_for_each_layer_and_softens_only_that_layers_routing(
    temperature_lens,
):
    torch.manual_seed(0)
    config = DemoConfig(n_layers=2)
    model, corpus = DemoMoEModel(config), make_corpus(config, seed=0, n_sequences=64)
    lens = temperature_lens(strength=3.0)
    monitor = Monitor("lens", controller=None, lens=lens)
    monitor.attach(model)
    raw, received = {}, {}
    for layer_id, block in enumerate(model.layers):
        gate = block.mlp.gate
        gate.register_forward_pre_hook(
            lambda m, args, layer_id=layer_id: raw.__setitem__(layer_id, args[0]), prepend=True
        )
        gate.register_forward_hook(lambda m, args, out, layer_id=layer_id: received.__setitem__(layer_id, args[0]))
    tokens = batch_at(corpus, 1, config.batch_size)[:, :-1]
    monitor.bus.publish(
        "decision", ControlDecision(controller="test", trigger="snapshot", step=1, layer_id=0, pressure=0.5)
    )
    assert lens.state.layer_pressure == {0: 0.5}
    with torch.no_grad():
        model(tokens)
    torch.testing.assert_close(received[0], raw[0] / 2.5)  # the router of layer 0 reads its softened input
    assert received[1] is raw[1]  # layer 1 has no pressure: the very same tensor goes through

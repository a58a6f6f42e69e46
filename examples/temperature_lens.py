"""A parameterised lens on the router path: routing softens where the controller reports pressure.

``TemperatureLens`` divides each router's input by ``1 + strength * pressure``
(the pressure the latest decision reported for that layer): a layer under
pressure routes with a flatter softmax, a layer without pressure is not
touched (the very same tensor goes through). Here the pressure comes from a
PressureController in dry run on the demo's collapsing arm: nothing but the
lens acts on the model.

Run it: ``python examples/temperature_lens.py`` (about 30 s on a laptop CPU).
"""

from __future__ import annotations

import torch

from chronomoe import Monitor
from chronomoe.controller import PressureController
from chronomoe.demo import COLLAPSE, training_loss
from chronomoe.lens import ChronoLens, LensState
from chronomoe.toy_model import DemoConfig, DemoMoEModel, batch_at, make_corpus, make_optimizer


class TemperatureLens(ChronoLens):
    """Router input ``x / (1 + strength * pressure of the layer)``; ``x`` itself where the pressure is 0."""

    def __init__(self, strength: float = 2.0) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor, state: LensState | None = None, layer_id: int = 0) -> torch.Tensor:
        pressure = (self.state if state is None else state).layer_pressure.get(layer_id, 0.0)
        return x if pressure == 0.0 else x / (1.0 + self.strength * pressure)


def main(steps: int = 200) -> None:
    torch.manual_seed(0)
    config = DemoConfig()
    model, corpus = DemoMoEModel(config), make_corpus(config, seed=0)
    optimizer = make_optimizer(model)
    monitor = Monitor("temperature-lens", controller=PressureController(dry_run=True), lens=TemperatureLens())
    monitor.attach(model)
    for step in range(1, steps + 1):
        objective, _ = training_loss(model, batch_at(corpus, step, config.batch_size), COLLAPSE)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        monitor.step(step)
        if step % 10 == 0:
            snapshot = monitor.snapshot(step)
            pressures = monitor.lens.state.layer_pressure
            print(
                step,
                " ".join(
                    f"L{layer.layer_id} {layer.alert_state.value[:3]} p={pressures.get(layer.layer_id, 0):.2f}"
                    for layer in snapshot.layers
                ),
            )
    monitor.close()


if __name__ == "__main__":
    main()

"""A synthetic DeepSeek-V3-sized training run (58 MoE layers x 256 experts), recorded through ``Monitor.observe``.

The routing of each layer is a softmax over per-expert logits, sampled every
snapshot window as a multinomial draw of ``tokens_per_step * top_k *
steps_per_snapshot`` expert assignments (4,096 tokens x top-8 x 10 steps:
327,680 per window by default):

* every layer starts mildly unbalanced (logits ~ N(0, 0.35): Neff/n about 0.9)
  and drifts (a random walk of 0.01 per window);
* about one layer in five collapses: from an onset snapshot, two winner
  experts' logits grow and a third of the experts' logits sink, each at the
  layer's rate, up to the layer's cap. Caps above about 7 take the layer to
  ``collapse_confirmed`` (Top2 > 0.85 with dead experts), caps near 6 leave it
  flapping around ``pre_collapse``;
* with a controller (a :class:`~chronomoe.controller.PressureController` by
  default), its bias is added to the logits before sampling, as a
  selection-only router bias would be, so the controller holds back the
  layers whose cap it can outweigh, and backs off or abstains on the others.

The training loss falls as ``2.1 + 2.5 / sqrt(1 + step / 2000)`` plus a
penalty growing with the layers' imbalance and Gaussian noise; a validation
loss is recorded every 10th snapshot. Everything is seeded.

Run as a script to write a run folder (prints its path)::

    python benchmarks/synthetic_run.py OUTPUT_DIR [--snapshots 2000] [--run-id synthetic-58x256] [--no-controller]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chronomoe import Monitor
from chronomoe.controller import PressureController


@dataclass(frozen=True)
class SyntheticRun:
    """The shape of a synthetic run; the defaults are DeepSeek-V3's MoE layers."""

    n_layers: int = 58
    n_experts: int = 256
    snapshots: int = 2000
    steps_per_snapshot: int = 10
    tokens_per_step: int = 4096
    top_k: int = 8
    collapsing_share: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class _Collapse:
    layer: int
    onset: int
    rate: float
    cap: float
    winners: np.ndarray
    sinking: np.ndarray


def _collapses(shape: SyntheticRun, rng: np.random.Generator) -> list[_Collapse]:
    count = max(1, round(shape.collapsing_share * shape.n_layers))
    layers = np.sort(rng.choice(shape.n_layers, size=count, replace=False))
    collapses = []
    for position, layer in enumerate(layers):
        experts = rng.permutation(shape.n_experts)
        collapses.append(
            _Collapse(
                layer=int(layer),
                onset=int(rng.uniform(0.1, 0.6) * shape.snapshots),
                rate=float(rng.uniform(8.0, 30.0) / shape.snapshots),  # logits per snapshot
                cap=float(5.8 + 0.4 * (position % 2) if position % 3 == 0 else rng.uniform(7.5, 11.0)),
                winners=experts[:2],
                sinking=experts[2 : 2 + shape.n_experts // 3],
            )
        )
    return collapses


class SyntheticRouting:
    """The routing of every layer of a synthetic run, window after window (see the module docstring)."""

    def __init__(self, shape: SyntheticRun) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(shape.seed)
        self.logits = self.rng.normal(0.0, 0.35, size=(shape.n_layers, shape.n_experts))
        self.collapses = _collapses(shape, self.rng)
        self.assignments = shape.tokens_per_step * shape.top_k * shape.steps_per_snapshot

    def step_of(self, position: int) -> int:
        """The training step at which the window ``position`` (from 0) ends."""
        return (position + 1) * self.shape.steps_per_snapshot

    def counts(self, position: int, bias: np.ndarray | float = 0.0) -> np.ndarray:
        """Expert assignments ``[n_layers, n_experts]`` of window ``position``, with a router ``bias`` in logits."""
        drive = np.zeros_like(self.logits)
        for collapse in self.collapses:
            grown = min(collapse.cap, collapse.rate * max(0, position - collapse.onset))
            drive[collapse.layer, collapse.winners] += grown
            drive[collapse.layer, collapse.sinking] -= 0.9 * grown
        self.logits += self.rng.normal(0.0, 0.01, size=self.logits.shape)
        scores = self.logits + drive + bias
        probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return np.stack([self.rng.multinomial(self.assignments, row) for row in probabilities])

    def losses(self, position: int, imbalance: float) -> tuple[float, float | None]:
        """``(train loss, validation loss or None)`` of window ``position``; ``imbalance`` 0 (balanced) to 0.8."""
        step = self.step_of(position)
        train_loss = 2.1 + 2.5 / math.sqrt(1 + step / 2000) + 0.4 * imbalance + self.rng.normal(0.0, 0.01)
        val_loss = train_loss + 0.06 + self.rng.normal(0.0, 0.01) if position % 10 == 9 else None
        return train_loss, val_loss


def imbalance_of(diversity: np.ndarray) -> float:
    """How far the layers are from balance, for the loss penalty: mean of ``max(0, 0.8 - Neff/n)``."""
    known = diversity[~np.isnan(diversity)]
    return float(np.maximum(0.8 - known, 0.0).mean()) if known.size else 0.0


def write_synthetic_run(
    output_dir: str | Path,
    run_id: str = "synthetic-58x256",
    shape: SyntheticRun | None = None,
    *,
    controller: PressureController | None = None,
    with_controller: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the run folder ``output_dir/run_id`` (see the module docstring) and return its path.

    ``controller`` defaults to a :class:`PressureController` with its default
    policy when ``with_controller``; without one the Monitor's no-op
    controller records "no action" decisions. ``progress`` is called with
    each snapshot's position.
    """
    shape = shape or SyntheticRun()
    routing = SyntheticRouting(shape)
    if with_controller and controller is None:
        controller = PressureController()
    monitor = Monitor(
        run_id,
        output_dir=output_dir,
        n_experts=[shape.n_experts] * shape.n_layers,
        model_name=f"synthetic-{shape.n_layers}x{shape.n_experts}",
        training_config={"synthetic": True, **shape.__dict__},
        lens=None,
        **({"controller": controller} if controller is not None else {}),
    )
    imbalance = 0.0
    with monitor:
        for position in range(shape.snapshots):
            bias = 0.0 if controller is None or controller.actuator is None else controller.actuator.read()
            train_loss, val_loss = routing.losses(position, imbalance)
            snapshot = monitor.observe(
                routing.counts(position, bias), step=routing.step_of(position), train_loss=train_loss, val_loss=val_loss
            )
            diversity = [layer.expert_diversity for layer in snapshot.layers]
            imbalance = imbalance_of(np.array([math.nan if value is None else value for value in diversity]))
            if progress is not None:
                progress(position)
    return Path(output_dir) / run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--run-id", default="synthetic-58x256")
    parser.add_argument("--snapshots", type=int, default=SyntheticRun.snapshots)
    parser.add_argument("--layers", type=int, default=SyntheticRun.n_layers)
    parser.add_argument("--experts", type=int, default=SyntheticRun.n_experts)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-controller", action="store_true", help="record with the Monitor's no-op controller")
    args = parser.parse_args(argv)
    shape = SyntheticRun(n_layers=args.layers, n_experts=args.experts, snapshots=args.snapshots, seed=args.seed)
    every = max(1, args.snapshots // 20)

    def report(position: int) -> None:
        if (position + 1) % every == 0:
            print(f"{position + 1}/{args.snapshots} snapshots", file=sys.stderr, flush=True)

    print(
        write_synthetic_run(
            args.output_dir, args.run_id, shape, with_controller=not args.no_controller, progress=report
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

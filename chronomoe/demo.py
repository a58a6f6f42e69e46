"""``chronomoe demo``: a Mixture-of-Experts model's routing collapsing, recorded live, and rescued, on a CPU.

The demo trains one small MoE language model (pure torch) three times, from
the same initial weights on the same synthetic data, each time with a
:class:`~chronomoe.Monitor` attached by ``monitor.attach(model)``. It shows a
progress bar per run, prints every alert transition the moment the alert
machines make it, then each run folder's per-layer summary (Neff, Top2, dead
experts, state, the step of each transition), a table of every arm's final
state per layer (Neff, Top2, MaxVio) and loss, and the folders' paths:

* ``demo-balanced``: trained with the Switch Transformer load-balancing loss
  (``alpha = 0.01`` per MoE layer). Its routing stays balanced: no alert at all.
* ``demo-collapse``: the same run without that loss; nothing else differs.
  Within a few dozen steps routing concentrates on one or two experts in some
  layers, experts stop receiving tokens, and the alert machines go
  ``nominal -> pre_collapse -> collapse_confirmed``; later windows may see a
  starved expert get a token again and the layer step back down (the table
  lists every transition).
* ``demo-controlled``: the collapsing run again, with a
  :class:`~chronomoe.controller.PressureController` (its defaults) acting on a
  selection-only router bias through the Monitor's actuator: it answers the
  alerts by moving tokens towards the under-used experts, within its bounds,
  and records every decision in ``decisions.jsonl``.

No nudge is needed and none is applied: no expert is switched off, no logit,
temperature or learning rate is changed. What drives it is the rich-get-richer
feedback that balancing losses exist to stop (Shazeer et al., 2017): the data's frequent tokens are
shared by every topic, so any expert can learn the same generic job; the
experts that receive more tokens learn it first, and the router (softmax over
experts, with a bias; the chosen expert's output is scaled by its probability,
as in Switch) sends them still more.

The model and its data are :mod:`chronomoe.toy_model`'s (:class:`DemoMoEModel`
at the default :class:`DemoConfig`: 4 layers of 8 experts, top-1 routing, on
synthetic Zipf-Markov text); the runs differ only in their :class:`Arm`.

Repeatable: ``torch.manual_seed(seed)`` before each run's model, the corpus
from ``torch.Generator().manual_seed(seed)``, and one torch thread
(:data:`DEMO_THREADS`): on CPU a run repeats bit for bit for a given number of
threads, so fixing it makes the demo print the same figures whatever the
machine's core count (a tiny model gains nothing from more threads, and on a
busy machine they cost a lot). A previous demo's run folders are replaced.

Run it as ``chronomoe demo`` or ``python -m chronomoe.demo``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chronomoe.controller import PressureController

from .alerts import AlertState, AlertTransition
from .cli.options import command_line
from .errors import InvalidInputError
from .io.lines import TORN_SUFFIX
from .io.run_folder import RUN_FILES, SUPERSEDED_SUFFIX
from .monitor import Monitor
from .report import format_summary, summarize_run
from .snapshots import SystemSnapshot

# Also importable from here: the README's training-loop example imports the model with the arms.
from .toy_model import LEARNING_RATE, DemoConfig, DemoMoEModel, batch_at, make_corpus, make_optimizer

DEFAULT_STEPS = 400
DEMO_THREADS = 1
"""Torch threads the demo trains with (restored afterwards)."""
SNAPSHOT_EVERY = 10
"""Training steps per snapshot window."""
MODEL_NAME = "chronomoe-demo-moe"


@dataclass(frozen=True)
class Arm:
    """One training run of the demo.

    Attributes:
        run_id: the run folder's name.
        balance_coefficient: weight of the Switch load-balancing loss of each MoE layer.
        description: what the run is, as printed.
        controlled: run a :class:`~chronomoe.controller.PressureController` on the router bias.
    """

    run_id: str
    balance_coefficient: float
    description: str
    controlled: bool = False


BALANCED = Arm("demo-balanced", 0.01, "with the Switch load-balancing loss (alpha 0.01 per MoE layer)")
COLLAPSE = Arm(
    "demo-collapse",
    0.0,
    "without it; nothing else differs (no nudge: no expert switched off, no logit or learning rate changed)",
)
CONTROLLED = Arm(
    "demo-controlled",
    0.0,
    "as demo-collapse, with a PressureController moving a selection-only router bias towards under-used experts",
    controlled=True,
)
ARMS = (BALANCED, COLLAPSE, CONTROLLED)
LOSS_WINDOWS = 5
"""Snapshot windows averaged for an arm's final loss (the last 50 steps at the default cadence)."""


def training_loss(model: DemoMoEModel, batch: torch.Tensor, arm: Arm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, language-model loss)`` of one batch, both scalar tensors.

    ``batch`` is ``[B, S + 1]`` token ids (:func:`batch_at`): the model reads the
    first ``S`` and predicts the last ``S``. The language-model loss is the mean
    next-token cross-entropy (nats); the objective adds ``arm.balance_coefficient``
    times the model's summed Switch balancing losses.
    """
    logits, balance_loss = model(batch[:, :-1])
    lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return lm_loss + arm.balance_coefficient * balance_loss, lm_loss


# -- one run -------------------------------------------------------------------------------
@dataclass
class ArmOutcome:
    """What one run did: its folder, every alert transition and every TRAIN snapshot, in order."""

    arm: Arm
    run_dir: Path
    transitions: list[AlertTransition] = field(default_factory=list)
    snapshots: list[SystemSnapshot] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Mean language-model loss of the last :data:`LOSS_WINDOWS` snapshot windows (nats)."""
        losses = [snapshot.train_loss for snapshot in self.snapshots[-LOSS_WINDOWS:] if snapshot.train_loss is not None]
        return statistics.fmean(losses)

    @property
    def nominal_from(self) -> int | None:
        """The first snapshot step from which every layer stays nominal to the end; ``None`` if it ends alerting."""
        step = None
        for snapshot in reversed(self.snapshots):
            if any(layer.alert_state is not AlertState.NOMINAL for layer in snapshot.layers):
                break
            step = snapshot.step
        return step

    def final_layers(self) -> list[dict[str, object]]:
        """Each layer's state, Neff, Top2 and MaxVio at the last snapshot."""
        return [
            {
                "layer": layer.layer_id,
                "state": layer.alert_state.value,
                "n_effective": layer.n_effective,
                "n_experts": layer.n_experts,
                "top2_share": layer.top2_share,
                "max_vio": layer.max_vio,
            }
            for layer in self.snapshots[-1].layers
        ]

    @property
    def confirmed_layers(self) -> list[int]:
        """Layers that reached ``collapse_confirmed`` at some snapshot, by layer id."""
        return sorted({t.layer_id for t in self.transitions if t.dest is AlertState.COLLAPSE_CONFIRMED})

    @property
    def first_confirmation_step(self) -> int | None:
        steps = [t.step for t in self.transitions if t.dest is AlertState.COLLAPSE_CONFIRMED]
        return min(steps) if steps else None


def describe_transition(run_id: str, transition: AlertTransition) -> str:
    """One line for a transition: run, step, layer, states, the metrics that caused it."""
    metrics = transition.metrics
    return (
        f"[{run_id}] step {transition.step:>4}  layer {transition.layer_id}: "
        f"{transition.source.value} -> {transition.dest.value}  "
        f"(Neff {metrics['n_effective']:.2f}/{metrics['n_experts']}, Top2 {metrics['top2_share']:.3f}, "
        f"dead {metrics['dead_expert_count']})"
    )


def _remove_previous_run(run_dir: Path) -> None:
    """Delete the files a previous demo wrote in ``run_dir``: the demo replaces its own runs (a Monitor refuses
    to record into a folder holding a run)."""
    for name in RUN_FILES:
        for path in (run_dir / name, run_dir / f"{name}{TORN_SUFFIX}", run_dir / f"{name}{SUPERSEDED_SUFFIX}"):
            path.unlink(missing_ok=True)


def train_arm(
    arm: Arm,
    config: DemoConfig,
    corpus: torch.Tensor,
    steps: int,
    seed: int,
    output_dir: str | Path,
    *,
    show_progress: bool = True,
    on_transition: Callable[[AlertTransition], None] | None = None,
) -> ArmOutcome:
    """Train the demo model for ``steps`` steps as ``arm`` prescribes, recording into ``output_dir/arm.run_id``.

    A snapshot closes every :data:`SNAPSHOT_EVERY` steps and at the last step;
    its ``train_loss`` is the mean language-model loss of its window.
    ``on_transition`` is subscribed to the monitor's ``"transition"`` topic.
    """
    run_dir = Path(output_dir) / arm.run_id
    _remove_previous_run(run_dir)
    torch.manual_seed(seed)
    model = DemoMoEModel(config)
    optimizer = make_optimizer(model)
    run_config = {
        "demo_arm": arm.run_id,
        "description": arm.description,
        "seed": seed,
        "steps": steps,
        "learning_rate": LEARNING_RATE,
        "balance_coefficient": arm.balance_coefficient,
        "controlled": arm.controlled,
        "snapshot_every": SNAPSHOT_EVERY,
        **asdict(config),
    }
    outcome = ArmOutcome(arm, run_dir)
    controller = PressureController() if arm.controlled else None
    options: dict[str, Any] = {"controller": controller} if controller is not None else {}
    with Monitor(arm.run_id, output_dir, model_name=MODEL_NAME, training_config=run_config, **options) as monitor:
        monitor.attach(model)
        monitor.bus.subscribe("transition", outcome.transitions.append)
        monitor.bus.subscribe("snapshot", outcome.snapshots.append, mode="TRAIN")
        if on_transition is not None:
            monitor.bus.subscribe("transition", on_transition)
        window_loss = torch.zeros(())
        window_steps = 0
        with tqdm(total=steps, desc=arm.run_id, unit="step", disable=not show_progress, dynamic_ncols=True) as bar:
            for step in range(1, steps + 1):
                objective, lm_loss = training_loss(model, batch_at(corpus, step, config.batch_size), arm)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(objective)  # objective.backward(), but typed
                optimizer.step()
                monitor.step(step)
                window_loss += lm_loss.detach()
                window_steps += 1
                if step % SNAPSHOT_EVERY == 0 or step == steps:
                    snapshot = monitor.snapshot(step, train_loss=window_loss.item() / window_steps)
                    window_loss.zero_()
                    window_steps = 0
                    states = "".join(layer.alert_state.value[0].upper() for layer in snapshot.layers)
                    bar.set_postfix_str(f"loss {snapshot.train_loss:.3f}  layers {states}")
                bar.update()
    return outcome


# -- the demo --------------------------------------------------------------------------------
def _verdict(balanced: ArmOutcome, collapse: ArmOutcome, controlled: ArmOutcome, steps: int) -> tuple[bool, list[str]]:
    """Whether the runs show what the demo promises, and the lines that say so."""
    lines = []
    healthy = not balanced.transitions
    if healthy:
        lines.append(f"{balanced.arm.run_id}: no alert in {steps} steps.")
    else:
        lines.append(
            f"{balanced.arm.run_id}: UNEXPECTED: {len(balanced.transitions)} alert transitions "
            f"(first: {describe_transition(balanced.arm.run_id, balanced.transitions[0])})."
        )
    layers = collapse.confirmed_layers
    if layers:
        lines.append(
            f"{collapse.arm.run_id}: COLLAPSE_CONFIRMED in layer{'s' if len(layers) > 1 else ''} "
            f"{', '.join(map(str, layers))} (first at step {collapse.first_confirmation_step})."
        )
    elif steps < DEFAULT_STEPS:
        lines.append(
            f"{collapse.arm.run_id}: no COLLAPSE_CONFIRMED in {steps} steps, too few to show one "
            f"(the default, {DEFAULT_STEPS} steps, shows one for seeds 0-9)."
        )
    else:
        lines.append(
            f"{collapse.arm.run_id}: did not reach COLLAPSE_CONFIRMED in {steps} steps "
            f"(the default, {DEFAULT_STEPS}, does for seeds 0-9)."
        )
    rescued = controlled.nominal_from
    if rescued is not None:
        lines.append(
            f"{controlled.arm.run_id}: every layer nominal from step {rescued} to the end; loss "
            f"{controlled.final_loss:.3f} against {collapse.final_loss:.3f} without the controller "
            f"(mean of the last {LOSS_WINDOWS} windows)."
        )
    else:
        alerting = [layer["layer"] for layer in controlled.final_layers() if layer["state"] != "nominal"]
        lines.append(f"{controlled.arm.run_id}: ends with layers {alerting} in an alert state.")
    # A run shorter than the default is not expected to show a collapse: it fails only on a false alarm.
    return healthy and ((bool(layers) and rescued is not None) or steps < DEFAULT_STEPS), lines


def arms_table(outcomes: Sequence[ArmOutcome]) -> str:
    """Every arm's final state per layer (Neff, Top2, MaxVio) and its final loss, as aligned text."""
    rows = [["arm", "layer", "state", "Neff/n", "Top2", "MaxVio", "loss"]]
    for outcome in outcomes:
        for position, layer in enumerate(outcome.final_layers()):
            rows.append(
                [
                    outcome.arm.run_id if position == 0 else "",
                    str(layer["layer"]),
                    str(layer["state"]),
                    f"{layer['n_effective']:.2f}/{layer['n_experts']}",
                    f"{layer['top2_share']:.3f}",
                    f"{layer['max_vio']:.2f}",
                    f"{outcome.final_loss:.3f}" if position == 0 else "",
                ]
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def arms_json(outcomes: Sequence[ArmOutcome], shown: bool) -> str:
    """What :func:`arms_table` shows, and the verdict, as JSON."""
    return json.dumps(
        {
            "verdict": "shown" if shown else "not shown",
            "arms": {
                outcome.arm.run_id: {
                    "run_dir": str(outcome.run_dir),
                    "final_loss": outcome.final_loss,
                    "nominal_from": outcome.nominal_from,
                    "layers": outcome.final_layers(),
                }
                for outcome in outcomes
            },
        },
        indent=2,
    )


def _with_demo_threads(function: Callable[..., int]) -> Callable[..., int]:
    """Run ``function`` with :data:`DEMO_THREADS` torch threads, restoring the caller's count afterwards."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> int:
        threads = torch.get_num_threads()
        torch.set_num_threads(DEMO_THREADS)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


@_with_demo_threads
def run_demo(
    output_dir: str = "runs", steps: int = DEFAULT_STEPS, seed: int = 0, quiet: bool = False, as_json: bool = False
) -> int:
    """Train the three runs, print what the monitors saw, return 0 when the demo showed its point, else 1.

    The point: the balanced run raises no alert, the collapsing run reaches
    ``collapse_confirmed`` and the controlled run ends with every layer
    nominal (the last two not required of runs shorter than
    :data:`DEFAULT_STEPS`, which may be too short for them). The last line
    printed says why the exit code is 1.

    Args:
        output_dir: parent folder of the run folders ``demo-balanced``, ``demo-collapse`` and ``demo-controlled``.
        steps: training steps of each run.
        seed: seeds the initial weights (the same for every run) and the corpus.
        quiet: print only the verdict and the run folders (no progress bars,
            live transitions or tables).
        as_json: print only the arms' table and the verdict as JSON.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError("steps", steps, "must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError("seed", seed, "must be a non-negative integer")
    config = DemoConfig()
    say = (lambda text: None) if quiet or as_json else print
    say(
        textwrap.fill(
            f"ChronoMoE demo: one small MoE language model ({config.n_layers} layers x {config.n_experts} experts, "
            f"top-{config.top_k} routing), trained {len(ARMS)} times on CPU from the same weights and data "
            f"(seed {seed}): {steps} steps each, a snapshot every {SNAPSHOT_EVERY} steps.",
            width=100,
        )
    )
    for arm in ARMS:
        say(textwrap.fill(arm.description, width=100, initial_indent=f"  {arm.run_id}: ", subsequent_indent=" " * 19))
    say("Progress bars end with each layer's alert state: N nominal, P pre_collapse, C collapse_confirmed.\n")
    corpus = make_corpus(config, seed)
    outcomes = []
    for arm in ARMS:
        started = time.perf_counter()
        announce = (
            None
            if quiet or as_json
            else (lambda transition, run_id=arm.run_id: tqdm.write(describe_transition(run_id, transition)))
        )
        outcomes.append(
            train_arm(
                arm,
                config,
                corpus,
                steps,
                seed,
                output_dir,
                show_progress=not (quiet or as_json),
                on_transition=announce,
            )
        )
        say(f"{arm.run_id}: {steps} steps in {time.perf_counter() - started:.1f} s\n")
    for outcome in outcomes:
        say(format_summary(summarize_run(outcome.run_dir)) + "\n")
    balanced, collapse, controlled = outcomes
    shown, lines = _verdict(balanced, collapse, controlled, steps)
    if as_json:
        print(arms_json(outcomes, shown))
        return 0 if shown else 1
    say(arms_table(outcomes) + "\n")
    print("\n".join(lines))
    print("Run folders: " + "  ".join(str(outcome.run_dir) for outcome in outcomes))
    command = command_line()
    say(f"Look again: {command} summary {collapse.run_dir}   {command} decisions {controlled.run_dir}")
    if not shown:
        print("Exit code 1: the runs did not show what the demo promises (see the lines above).")
    return 0 if shown else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chronomoe.demo [--output-dir DIR] [--steps N] [--seed S] [--quiet] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m chronomoe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs", help="parent folder of the run folders (default: runs)")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"training steps per run (default: {DEFAULT_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict and the run folders")
    parser.add_argument("--json", action="store_true", help="print only the arms' final table and verdict, as JSON")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.output_dir, args.steps, args.seed, args.quiet, args.json)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""What a run came to, and how runs differ: the facts of each run and the comparison table of several.

:func:`run_facts` reduces a :class:`~chronomoe.report.rundata.RunData` to the
numbers a practitioner compares between runs (last losses, layers that
alerted and when, balance at the end, the controller's activity);
:func:`comparison_rows` lays the facts of several runs side by side, each
number with its difference from the first run (the baseline). "At the end"
means each layer's last snapshot with data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..alerts import AlertState
from .rows import STATE_CODES
from .rundata import RunData, at_end

LAST_LOSS_SNAPSHOTS = 5
"""Snapshots averaged for a run's last loss (fewer when the run has fewer)."""


@dataclass(frozen=True)
class Fact:
    """One comparable fact: its text, and its number when the difference to another run means something."""

    text: str
    value: float | None = None
    digits: int = 0


def _last_loss(losses: np.ndarray) -> Fact:
    known = losses[~np.isnan(losses)][-LAST_LOSS_SNAPSHOTS:]
    if not known.size:
        return Fact("-")
    mean = float(known.mean())
    return Fact(f"{mean:.3f}", mean, 3)


def _layers_reaching(run: RunData, state: AlertState) -> Fact:
    """Layers that were in ``state`` (or worse) at some snapshot, with the first step it happened."""
    reached = run.states >= STATE_CODES[state]
    layers = np.flatnonzero(reached.any(axis=0))
    if not layers.size:
        return Fact("0", 0)
    first_step = int(run.steps[np.flatnonzero(reached.any(axis=1))[0]])
    return Fact(f"{layers.size} (first at step {first_step})", layers.size)


def _worst(values: np.ndarray, layer_ids: np.ndarray, lowest: bool, digits: int) -> Fact:
    if np.isnan(values).all():
        return Fact("-")
    position = int(np.nanargmin(values) if lowest else np.nanargmax(values))
    value = float(values[position])
    return Fact(f"{value:.{digits}f} (layer {layer_ids[position]})", value, digits)


def run_facts(run: RunData) -> dict[str, Fact]:
    """The facts of one run, in table order (keys are the row names of :func:`comparison_rows`)."""
    diversity_end = at_end(run.n_effective / run.n_experts[None, :])
    states_end = at_end(np.where(run.states < 0, np.nan, run.states))
    collapsed_end = int(np.sum(states_end == STATE_CODES[AlertState.COLLAPSE_CONFIRMED]))
    in_collapse = (run.states == STATE_CODES[AlertState.COLLAPSE_CONFIRMED]).any(axis=1)
    facts = {
        "snapshots (steps)": Fact(f"{run.n_snapshots} ({run.steps[0]}..{run.steps[-1]})"),
        "last train loss": _last_loss(run.train_loss),
        "last val loss": _last_loss(run.val_loss),
        "layers that reached pre_collapse": _layers_reaching(run, AlertState.PRE_COLLAPSE),
        "layers that reached collapse_confirmed": _layers_reaching(run, AlertState.COLLAPSE_CONFIRMED),
        "layers collapse_confirmed at the end": Fact(f"{collapsed_end} of {len(run.layer_ids)}", collapsed_end),
        "snapshots with a layer collapse_confirmed": Fact(
            f"{int(in_collapse.sum())} ({100 * in_collapse.mean():.0f}%)", int(in_collapse.sum())
        ),
        "lowest Neff/n at the end": _worst(diversity_end, run.layer_ids, lowest=True, digits=3),
        "mean Neff/n at the end": Fact("-")
        if np.isnan(diversity_end).all()
        else Fact(f"{np.nanmean(diversity_end):.3f}", float(np.nanmean(diversity_end)), 3),
        "highest MaxVio at the end": _worst(at_end(run.max_vio), run.layer_ids, lowest=False, digits=2),
        "dead experts at the end, all layers": Fact(
            str(int(np.nansum(at_end(np.where(run.states < 0, np.nan, run.dead_experts))))),
            float(np.nansum(at_end(np.where(run.states < 0, np.nan, run.dead_experts)))),
        ),
        "alert transitions": Fact(str(len(run.transitions)), len(run.transitions)),
    }
    controller = run.controller
    if controller is None:
        facts["controller"] = Fact("no decisions.jsonl")
        return facts
    actions = ", ".join(f"{name} {count}" for name, count in sorted(controller.action_totals.items()))
    mode = " (dry run)" if controller.dry_run else ""
    facts["controller"] = Fact(f"{', '.join(controller.controllers) or '-'}{mode}: {actions or 'no decision'}")
    facts["decisions applied to the model"] = Fact(str(controller.applied), controller.applied)
    bias_end = at_end(controller.bias)
    facts["largest |bias| at the end"] = _worst(bias_end, run.layer_ids, lowest=False, digits=3)
    return facts


def _difference(fact: Fact, baseline: Fact) -> str:
    if fact.value is None or baseline.value is None or math.isclose(fact.value, baseline.value):
        return ""
    return f" ({fact.value - baseline.value:+.{fact.digits}f})"


def comparison_rows(runs: Sequence[RunData], labels: Sequence[str]) -> list[list[str]]:
    """The comparison table, header first: one row per fact, one column per run; each number after the
    first run's is followed by its difference from the first run's, in parentheses."""
    facts = [run_facts(run) for run in runs]
    names = list(dict.fromkeys(name for run_facts_ in facts for name in run_facts_))
    rows = [["", *labels]]
    for name in names:
        baseline = facts[0].get(name, Fact("-"))
        cells = [name]
        for position, run_facts_ in enumerate(facts):
            fact = run_facts_.get(name, Fact("-"))
            cells.append(fact.text + ("" if position == 0 else _difference(fact, baseline)))
        rows.append(cells)
    same_grid = all(np.array_equal(run.steps, runs[0].steps) for run in runs[1:])
    rows.append(["snapshot steps", *(["the same in every run"] * len(runs) if same_grid else _grid_notes(runs))])
    return rows


def _grid_notes(runs: Sequence[RunData]) -> list[str]:
    return [f"every {int(np.median(np.diff(run.steps)))} steps" if run.n_snapshots > 1 else "one" for run in runs]

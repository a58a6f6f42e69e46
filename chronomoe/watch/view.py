"""How ``chronomoe watch`` shows a :class:`~chronomoe.watch.state.WatchState`: a rich screen or plain lines.

* :func:`screen`: one redrawable screen for a terminal (rich): the run's
  header, one row per layer, worst first, with its state, Neff/n and Top2
  values and sparklines over the last snapshots, and dead experts; as many
  layers as fit ``height`` (the rest counted); the latest transitions and
  controller actions.
* :func:`snapshot_line`, :func:`transition_line`, :func:`decisions_line`:
  the plain lines printed when the output is not a terminal (or ``--plain``).

Sparklines use the eight block characters, scaled 0..1 (both metrics are
fractions), a space where a snapshot had no data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..alerts import AlertTransition
from ..report.palette import NO_DATA_COLOR, NO_DATA_TEXT_COLOR, STATE_COLORS, STATE_TEXT_COLORS
from ..report.rows import NO_DATA, STATES_BY_CODE
from .state import LayerTrace, WatchState

if TYPE_CHECKING:
    from rich.console import RenderableType

BLOCKS = "▁▂▃▄▅▆▇█"
FIXED_LINES = 9 + 8 + 4
"""Screen lines that are not layer rows: the header, the table's heading, the transitions and actions."""
SPARKLINE_FREE_COLUMNS = 60
"""Terminal columns taken by the layer table's other columns; the two sparklines share the rest."""


def sparkline(values: Iterable[float], low: float = 0.0, high: float = 1.0) -> str:
    """One block character per value, ``low`` to ``high`` (clipped); a space for NaN."""
    span = high - low
    characters = []
    for value in values:
        if math.isnan(value):
            characters.append(" ")
        else:
            level = round((min(max(value, low), high) - low) / span * (len(BLOCKS) - 1))
            characters.append(BLOCKS[level])
    return "".join(characters)


def _state_name(code: int) -> str:
    return "no data" if code == NO_DATA else STATES_BY_CODE[code].value


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def transition_line(transition: AlertTransition) -> str:
    """``step 1230 layer 7: pre_collapse -> collapse_confirmed (Neff 2.10/256, Top2 0.981, dead 40)``."""
    metrics = transition.metrics
    neff, top2 = metrics.get("n_effective"), metrics.get("top2_share")
    details = (
        f" (Neff {neff:.2f}/{metrics.get('n_experts', '?')}, Top2 {top2:.3f}, dead {metrics.get('dead_expert_count')})"
        if isinstance(neff, float) and isinstance(top2, float)
        else ""
    )
    change = f"{transition.source.value} -> {transition.dest.value}"
    return f"step {transition.step} layer {transition.layer_id}: {change}{details}"


def snapshot_line(state: WatchState) -> str:
    """One line for the latest snapshot: step, layers per state, the worst layer, the losses."""
    worst = state.worst_first()
    parts = [f"step {state.last_step}: {len(state.layers)} layers"]
    for name in ("collapse_confirmed", "pre_collapse"):
        count = state.count(name)
        if count:
            ids = sorted(trace.layer_id for trace in worst if _state_name(trace.state) == name)
            listed = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
            parts.append(f"{count} {name} ({listed})")
    with_data = [trace for trace in worst if trace.diversity and not math.isnan(trace.diversity[-1])]
    if with_data:
        lowest = min(with_data, key=lambda trace: trace.diversity[-1])
        parts.append(f"lowest Neff/n {lowest.diversity[-1]:.3f} (layer {lowest.layer_id})")
    if not math.isnan(state.train_loss):
        parts.append(f"train loss {state.train_loss:.4f}")
    return "; ".join(parts)


def decisions_line(step: int | None, actions: Counter[str]) -> str:
    """``step 1230: controller adjust 12, abstain 3`` for the acting decisions of one poll."""
    listed = ", ".join(f"{name} {count}" for name, count in sorted(actions.items()))
    return f"step {step}: controller {listed}"


def _state_text(code: int) -> Any:
    from rich.text import Text

    if code == NO_DATA:
        return Text(" no data ", style=f"{NO_DATA_TEXT_COLOR} on {NO_DATA_COLOR}")
    alert_state = STATES_BY_CODE[code]
    return Text(f" {alert_state.value} ", style=f"{STATE_TEXT_COLORS[alert_state]} on {STATE_COLORS[alert_state]}")


def _layer_row(trace: LayerTrace, points: int) -> list[Any]:
    diversity = trace.diversity[-1] if trace.diversity else math.nan
    top2 = trace.top2[-1] if trace.top2 else math.nan
    return [
        str(trace.layer_id),
        _state_text(trace.state),
        _number(diversity, 3),
        sparkline(list(trace.diversity)[-points:]),
        _number(top2, 3),
        sparkline(list(trace.top2)[-points:]),
        str(trace.dead),
    ]


def action_lines(state: WatchState, steps: int = 3) -> list[str]:
    """The acting decisions of the last ``steps`` steps that had any, newest first, one line per step:
    ``step 3000: abstain on layers 12, 15; adjust on layer 32``."""
    by_step: dict[int, dict[str, list[str]]] = {}
    for decision in reversed(state.decisions):
        if decision.step not in by_step and len(by_step) == steps:
            break
        layers = by_step.setdefault(decision.step, {}).setdefault(decision.action, [])
        layers.append("-" if decision.layer_id is None else str(decision.layer_id))
    lines = []
    for step, actions in by_step.items():
        parts = [
            f"{action} on layer{'s' if len(layers) > 1 else ''} {', '.join(sorted(layers, key=_layer_order))}"
            for action, layers in sorted(actions.items())
        ]
        lines.append(f"step {step}: " + "; ".join(parts))
    return lines


def _layer_order(layer: str) -> tuple[int, str]:
    return (int(layer), "") if layer.isdigit() else (-1, layer)


def screen(state: WatchState, run_dir: str, size: tuple[int, int], status: str) -> RenderableType:
    """The whole screen for a terminal of ``size`` (columns, lines) (see the module docstring)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text.assemble(
        ("chronomoe watch ", "bold"),
        (run_dir, "bold"),
        f"  run {state.run_id or '-'}" + (f" ({state.model_name})" if state.model_name else ""),
        f"\n{state.mode} snapshots seen {state.snapshots}, last step "
        + ("-" if state.last_step is None else str(state.last_step)),
        f", train loss {_number(state.train_loss, 4)}, val loss {_number(state.val_loss, 4)}",
        f"\n{status}   (Ctrl-C to stop)",
    )
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
    for name, justify in (
        ("layer", "right"),
        ("state", "left"),
        ("Neff/n", "right"),
        ("Neff/n, last snapshots", "left"),
        ("Top2", "right"),
        ("Top2, last snapshots", "left"),
        ("dead", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True, overflow="crop")  # type: ignore[arg-type]
    width, height = size
    points = max(8, (width - SPARKLINE_FREE_COLUMNS) // 2)
    layers = state.worst_first()
    room = max(height - FIXED_LINES, 3)
    shown = layers if len(layers) <= room else layers[: room - 1]
    for trace in shown:
        table.add_row(*_layer_row(trace, points))
    if len(shown) < len(layers):
        hidden = layers[len(shown) :]
        states = Counter(_state_name(trace.state) for trace in hidden)
        table.add_row("", f"... {len(hidden)} more: " + ", ".join(f"{n} {name}" for name, n in states.items()))
    transitions = [Text(transition_line(t)) for t in reversed(state.transitions)] or [Text("none yet")]
    totals = ", ".join(f"{name} {count}" for name, count in sorted(state.action_totals.items()))
    controller = [
        Text(f"controller {', '.join(state.controllers)}, decisions so far: {totals}", style="bold"),
        *(Text(line) for line in action_lines(state)),
    ]
    return Group(
        header,
        Text(""),
        table,
        Text(""),
        Text("latest transitions", style="bold"),
        *transitions,
        *([Text(""), *controller] if state.controllers else []),
    )

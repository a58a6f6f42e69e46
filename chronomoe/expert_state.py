"""ExpertState: the rolling health of one expert of one MoE layer, updated once per step (the seed's class).

Stateful and in memory only (nothing is written): a dashboard or a training
loop keeps one per (layer, expert) and calls :meth:`ExpertState.update` with
the tokens the expert received at each step, or
:meth:`ExpertState.update_from_event` with the layer's
:class:`~chronomoe.events.RoutingEvent`.

* ``utilization_ema``: exponential moving average of the expert's tokens per
  update (tokens), ``ema = ema_alpha * tokens + (1 - ema_alpha) * ema``,
  started at the first update's value (so it has no bias towards 0).
* ``share_ema``: the same average of the expert's share of its layer's
  tokens (in [0, 1]), over the updates that say the layer's total, started
  at the first of them.
* ``dead_steps``: consecutive updates with zero tokens; ``is_dead`` turns
  True once ``dead_steps > dead_threshold`` (default 50) and False again at
  the next update with tokens.

An update whose layer dispatched no token at all (``layer_token_count=0``)
is no data, as a snapshot window without tokens is: it changes neither the
averages nor the zero-traffic count, only ``last_step`` and
``last_token_count``.

The snapshot metrics are the windowed counterpart: a snapshot's
``dead_expert_count`` counts experts with no token over its window
(:mod:`chronomoe.metrics`); ``ExpertState`` remembers across windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError


class LayerCounts(Protocol):
    """What :meth:`ExpertState.update_from_event` reads of a :class:`~chronomoe.events.RoutingEvent` (named
    structurally: events.py re-exports ExpertState, where the seed defined it, and must not be imported here)."""

    @property
    def step(self) -> int: ...
    @property
    def layer_id(self) -> int: ...
    @property
    def n_experts(self) -> int: ...
    @property
    def token_count(self) -> int | None: ...
    @property
    def expert_token_counts(self) -> Any: ...  # [n_experts] integers


DEAD_THRESHOLD = 50
"""Default consecutive zero-traffic updates beyond which an expert is dead (the seed's value)."""

EMA_ALPHA = 0.1
"""Default weight of the newest update in the moving averages (the seed's value)."""


def _count(name: str, value: Any) -> int:
    """A Python or numpy integer >= 0 (not a bool, a float or a string), as an ``int``; else InvalidInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(name, value, "must be an integer >= 0")
    return int(value)


@dataclass
class ExpertState:
    """Rolling health of expert ``expert_id`` of layer ``layer_id`` (see the module docstring).

    Fields after ``expert_id`` are the state (``utilization_ema`` to
    ``updates``) and the configuration (``dead_threshold``, ``ema_alpha``);
    all are keyword arguments with the seed's defaults. Construction
    validates them: ids, ``dead_threshold`` and counters are integers >= 0,
    ``ema_alpha`` is in (0, 1]; :class:`~chronomoe.errors.InvalidInputError`
    names the first field that is not. ``updates`` counts the updates that
    held data; ``last_step`` and ``last_token_count`` are the last update's.
    """

    layer_id: int
    expert_id: int
    utilization_ema: float = 0.0
    share_ema: float = 0.0
    dead_steps: int = 0
    is_dead: bool = False
    last_token_count: int = 0
    last_step: int = 0
    updates: int = 0
    dead_threshold: int = DEAD_THRESHOLD
    ema_alpha: float = EMA_ALPHA
    _has_share: bool = field(default=False, init=False, repr=False, compare=False)
    """Whether an update has said the layer's total yet (``share_ema`` starts at the first that does)."""

    def __post_init__(self) -> None:
        for name in ("layer_id", "expert_id", "dead_steps", "last_token_count", "last_step", "updates"):
            setattr(self, name, _count(name, getattr(self, name)))
        self.dead_threshold = _count("dead_threshold", self.dead_threshold)
        if isinstance(self.ema_alpha, bool) or not isinstance(self.ema_alpha, (int, float)):
            raise InvalidInputError("ema_alpha", self.ema_alpha, "must be a number in (0, 1]")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise InvalidInputError("ema_alpha", self.ema_alpha, "must be in (0, 1]")
        self._has_share = self.updates > 0  # a state rebuilt from its fields continues its averages

    def update(self, token_count: int, step: int, layer_token_count: int | None = None) -> None:
        """Fold in one step: the expert received ``token_count`` tokens at ``step``.

        ``layer_token_count`` (the tokens the whole layer dispatched at that
        step) also updates ``share_ema``. Raises
        :class:`~chronomoe.errors.InvalidInputError`, changing nothing, when a
        count is not an integer >= 0, ``token_count`` exceeds
        ``layer_token_count``, or ``step`` is below the last update's.
        """
        tokens = _count("token_count", token_count)
        step = _count("step", step)
        total = None if layer_token_count is None else _count("layer_token_count", layer_token_count)
        if total is not None and tokens > total:
            raise InvalidInputError(
                "token_count", tokens, f"exceeds layer_token_count={total}, the tokens of the whole layer"
            )
        if step < self.last_step:
            raise InvalidInputError("step", step, f"is below the last update's step {self.last_step}")
        self.last_token_count = tokens
        self.last_step = step
        if total == 0:  # the layer dispatched nothing: no data on this expert
            return
        first = self.updates == 0
        self.updates += 1
        self.utilization_ema = float(tokens) if first else self._average(self.utilization_ema, tokens)
        if total is not None:
            share = tokens / total
            self.share_ema = self._average(self.share_ema, share) if self._has_share else share
            self._has_share = True
        if tokens == 0:
            self.dead_steps += 1
            self.is_dead = self.dead_steps > self.dead_threshold
        else:
            self.dead_steps = 0
            self.is_dead = False

    def update_from_event(self, event: LayerCounts) -> None:
        """:meth:`update` with this expert's count in ``event``, the event's step and its layer's total.

        Raises :class:`~chronomoe.errors.InvalidInputError` when the event is
        of another layer or has no expert ``expert_id``.
        """
        if event.layer_id != self.layer_id:
            raise InvalidInputError("event.layer_id", event.layer_id, f"is not this state's layer {self.layer_id}")
        if self.expert_id >= event.n_experts:
            raise InvalidInputError(
                "event.n_experts", event.n_experts, f"has no expert {self.expert_id} (this state's expert_id)"
            )
        self.update(int(event.expert_token_counts[self.expert_id]), event.step, event.token_count)

    def _average(self, average: float, value: float) -> float:
        return self.ema_alpha * value + (1.0 - self.ema_alpha) * average

"""check_immediate_alerts: the seed's instant, non-persistent check of a snapshot's layers, for dashboards.

A snapshot's ``alerts`` need their condition to persist over consecutive
snapshots (:mod:`chronomoe.alerts`); this check looks at the given layers
alone, with no history, so a dashboard can flag a layer the moment it
concentrates:

* ``WARNING: layer L concentrating (Neff=..., Top2=...)`` for a layer meeting
  the PRE_COLLAPSE condition, ``Neff < neff_ratio * n_experts`` or
  ``Top2 > pre_top2`` (the Top2 clause for layers of more than two experts,
  as in the alert rules; thresholds from ``rules``, by default the seed's
  0.6 and 0.75);
* ``ALERT: layer L has D dead expert(s) ...`` for a layer with at least one
  dead expert (no token over the window).

A layer whose window held no token (``no_data``) gives neither: it has no
metrics to judge.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .alerts import AlertRules
from .errors import InvalidInputError
from .snapshots import LayerSnapshot


def check_immediate_alerts(layers: Iterable[LayerSnapshot], rules: AlertRules | None = None) -> list[str]:
    """Warning and alert strings for the given layers, in their order (a layer's warning before its alert).

    ``layers`` are :class:`~chronomoe.snapshots.LayerSnapshot` s (a
    snapshot's ``layers``). Raises :class:`~chronomoe.errors.InvalidInputError`
    naming the position of an item that is not one.
    """
    rules = rules if rules is not None else AlertRules.default()
    messages = []
    for position, layer in enumerate(layers):
        if not isinstance(layer, LayerSnapshot):
            raise InvalidInputError(f"layers[{position}]", layer, "is not a LayerSnapshot")
        if layer.no_data or layer.n_effective is None or layer.top2_share is None:
            continue
        concentrating = rules.pre_condition(
            np.array([layer.n_effective]), np.array([layer.n_experts]), np.array([layer.top2_share])
        )
        if concentrating[0]:
            messages.append(
                f"WARNING: layer {layer.layer_id} concentrating "
                f"(Neff={layer.n_effective:.2f}/{layer.n_experts}, Top2={layer.top2_share:.3f})"
            )
        if layer.dead_expert_count >= 1:
            messages.append(
                f"ALERT: layer {layer.layer_id} has {layer.dead_expert_count}/{layer.n_experts} dead expert(s) "
                f"(no token over the window; Top2={layer.top2_share:.3f})"
            )
    return messages

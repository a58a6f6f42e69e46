"""Sinks and training-framework callbacks built on the Monitor's bus.

Each module imports its framework when imported itself, never from here:

* :mod:`chronomoe.integrations.tensorboard`: :class:`TensorBoardSink`, per-layer
  scalars and transition texts (``pip install 'chronomoe[tensorboard]'``);
* :mod:`chronomoe.integrations.hf_trainer`: :class:`ChronoMoECallback` for the
  ``transformers`` Trainer (``pip install 'chronomoe[hf]'``);
* :mod:`chronomoe.integrations.lightning`: :class:`ChronoMoELightningCallback`
  for Lightning (``pip install 'chronomoe[lightning]'``);
* :mod:`chronomoe.integrations.wandb`, :mod:`chronomoe.integrations.mlflow`,
  :mod:`chronomoe.integrations.trackio`: experiment-tracker sinks
  (``chronomoe[wandb]``, ``chronomoe[mlflow]``, ``chronomoe[trackio]``) that
  share their keys and behaviour through :mod:`chronomoe.integrations.trackers`
  (which needs no tracker package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..alerts import AlertState, AlertTransition

if TYPE_CHECKING:
    from ..bus import Subscription
    from ..monitor import Monitor


def stop_on_collapse(monitor: Monitor, mode: str = "TRAIN") -> Subscription:
    """Make ``monitor`` request a stop when any layer of ``mode`` becomes collapse_confirmed."""

    def request(transition: AlertTransition) -> None:
        monitor.request_stop(
            f"layer {transition.layer_id} collapse_confirmed at step {transition.step} "
            f"(Top2={transition.metrics['top2_share']:.3f}, dead={transition.metrics['dead_expert_count']})"
        )

    return monitor.bus.subscribe("transition", request, dest=AlertState.COLLAPSE_CONFIRMED, mode=mode)

"""ChronoMoE in torchtitan: a ``MetricsProcessor`` that runs the monitor at the trainer's cadence.

Usage, in a torchtitan config function (``--module``/``--config``), replace
the metrics config::

    from chronomoe.integrations.torchtitan import ChronoMoEMetricsProcessor

    config = deepseek_v3_debugmodel()
    config.metrics = ChronoMoEMetricsProcessor.Config(log_freq=10, run_id="dsv3-debug")

What it does, with no change to the model or the trainer:

* when the trainer hands it the model (``metrics_processor.model_parts = ...``),
  it attaches the monitor: torchtitan's routers (``TokenChoiceTopKRouter``)
  are found by :func:`chronomoe.capture.attach` and each forward's expert ids
  are counted on the device (sync-free; forwards re-run by activation
  checkpointing counted once, unlike torchtitan's ``tokens_per_expert_E``);
* when the trainer hands it the optimizers, it registers a step post-hook that
  ends the monitor's step (``monitor.step``) with torchtitan's current step;
  with ``expert_health=True`` also the per-expert gradient-norm pre-hook of an
  :class:`~chronomoe.capture.expert_norms.ExpertHealthTracker`;
* each time the trainer logs (``log_freq``), it snapshots with the step's loss,
  and adds the snapshot's per-layer metrics to what the trainer logs (its
  TensorBoard / W&B loggers and the console), as ``chronomoe/layer_<i>/<metric>``.

The run folder goes to ``<dump_folder>/<output_subdir>/<run_id>`` (rank 0 of
the world writes it; under ``torch.distributed`` every rank takes part in the
snapshot's collectives, as :class:`~chronomoe.Monitor` requires). Stopping is
the trainer's: ``processor.monitor.should_stop`` turns True when a handler
asks (``stop_on_collapse=True`` subscribes one); check it from a ``Trainer``
subclass's ``should_continue_training``. Pipeline parallelism (several model
parts on a rank) is refused: the monitor attaches to one module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.observability import structured_logger

from ..capture.expert_norms import ExpertHealthTracker
from ..errors import InvalidInputError
from ..monitor import Monitor
from ..snapshots import SystemSnapshot
from . import stop_on_collapse as subscribe_stop_on_collapse

LOGGED_METRICS = ("n_effective", "top2_share", "max_vio", "dead_expert_count")
"""Per-layer snapshot metrics added to the trainer's logs."""


class ChronoMoEMetricsProcessor(MetricsProcessor):  # type: ignore[misc]  # torchtitan ships no type hints
    """torchtitan's metrics processor with a :class:`~chronomoe.Monitor` (see the module docstring).

    Attributes:
        monitor: the monitor (made in the constructor, attached when the trainer hands over the model).
        health: the expert-health tracker (``expert_health=True``), once attached.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(MetricsProcessor.Config):  # type: ignore[misc]
        run_id: str = "torchtitan"
        """ChronoMoE run id: the run folder's name"""

        output_subdir: str | None = "chronomoe"
        """Folder of the run folder, under the trainer's dump_folder (None: write nothing)"""

        model_name: str = ""
        """Model name recorded in snapshots and the manifest"""

        stop_on_collapse: bool = False
        """Set monitor.should_stop when a layer becomes collapse_confirmed (the trainer must check it)"""

        expert_health: bool = False
        """Track per-expert weight and gradient norms and the silent-expert signal (expert_health.jsonl)"""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        self._attached = False
        self._gradients_hooked = False
        self._hooked: list[Any] = []
        self.health: ExpertHealthTracker | None = None
        super().__init__(config, **kwargs)
        output = None
        if config.output_subdir is not None:
            output = os.path.join(kwargs.get("dump_folder", "./outputs"), config.output_subdir)
        self.monitor = Monitor(config.run_id, output_dir=output, model_name=config.model_name)
        if config.stop_on_collapse:
            subscribe_stop_on_collapse(self.monitor)
        self._last_step = 0

    # The trainer assigns these after building the model and the optimizers; the base class sets them to None.
    @property
    def model_parts(self) -> list[nn.Module] | None:
        return self.__dict__.get("_model_parts")

    @model_parts.setter
    def model_parts(self, parts: list[nn.Module] | None) -> None:
        self.__dict__["_model_parts"] = parts
        if parts is None or self._attached:
            return
        if len(parts) != 1:
            raise InvalidInputError(
                "model_parts", len(parts), "one model part per rank is supported (pipeline parallelism is not)"
            )
        attachment = self.monitor.attach(parts[0])
        self._attached = True
        if self.config.expert_health:
            self.health = ExpertHealthTracker(parts[0], attachment.layers)
            self.health.follow(self.monitor)
            self._hook_gradients()

    @property
    def optimizers(self) -> Any:
        return self.__dict__.get("_optimizers")

    @optimizers.setter
    def optimizers(self, optimizers: Any) -> None:
        self.__dict__["_optimizers"] = optimizers
        if optimizers is None:
            return
        self._hooked.append(optimizers.register_step_post_hook(lambda *args, **kwargs: self._end_step()))
        self._hook_gradients()

    def _hook_gradients(self) -> None:
        """Hook the tracker's gradient norms on the optimizers once both exist (the trainer's order varies)."""
        optimizers = self.optimizers
        if self.health is not None and optimizers is not None and not self._gradients_hooked:
            self.health.hook_optimizer(optimizers)
            self._gradients_hooked = True

    def _end_step(self) -> None:
        """After each optimizer step: end the monitor's step with the trainer's step number."""
        step = structured_logger.get_step()
        self._last_step = step if step is not None else self._last_step + 1
        self.monitor.step(self._last_step)

    def log(
        self,
        step: int,
        global_avg_loss: float,
        global_max_loss: float,
        grad_norm: float,
        extra_metrics: dict[str, Any] | None = None,
    ) -> None:
        """Snapshot the window since the last log, then log as torchtitan does, with the snapshot's metrics."""
        metrics = dict(extra_metrics or {})
        if self.monitor.capture is not None and self.monitor.capture.recorder is not None:
            snapshot = self.monitor.snapshot(step, train_loss=global_avg_loss)
            metrics.update(snapshot_metrics(snapshot))
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=metrics)

    def close(self) -> None:
        """Remove every hook, close the monitor's files, then torchtitan's loggers."""
        for handle in self._hooked:
            handle.remove()
        self._hooked.clear()
        if self.health is not None:
            self.health.remove()
        self.monitor.close()
        super().close()


def snapshot_metrics(snapshot: SystemSnapshot) -> dict[str, float]:
    """``{"chronomoe/layer_<i>/<metric>": value}`` for the :data:`LOGGED_METRICS` of each layer with data,
    and ``chronomoe/alert_level/layer_<i>`` (0 nominal, 1 pre_collapse, 2 collapse_confirmed)."""
    levels = {"nominal": 0, "pre_collapse": 1, "collapse_confirmed": 2}
    metrics: dict[str, float] = {}
    for layer in snapshot.layers:
        for name in LOGGED_METRICS:
            value = getattr(layer, name)
            if value is not None:
                metrics[f"chronomoe/layer_{layer.layer_id}/{name}"] = float(value)
        metrics[f"chronomoe/alert_level/layer_{layer.layer_id}"] = float(levels[layer.alert_state.value])
    return metrics

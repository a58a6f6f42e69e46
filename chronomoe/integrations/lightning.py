"""ChronoMoE in Lightning: a callback, no changes to the LightningModule.

Usage::

    monitor = Monitor("run1", output_dir="runs")
    trainer = lightning.pytorch.Trainer(callbacks=[ChronoMoELightningCallback(monitor)], ...)
    trainer.fit(module, data)

The callback attaches the monitor to the LightningModule when fitting starts,
ends the monitor's step after each optimizer step (``trainer.global_step``
advanced; micro-batches of gradient accumulation belong to one step), and
takes a snapshot every ``every_n_steps`` steps (default: the trainer's
``log_every_n_steps``) with the step's training loss and the latest logged
``val_loss``. Reading the loss synchronises with the device, at the snapshot
cadence only. Steps after the last snapshot are snapshotted when fitting
ends, and the hooks are removed then. Whenever ``monitor.should_stop`` is set
it sets ``trainer.should_stop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback, LightningModule, Trainer

from . import stop_on_collapse as subscribe_stop_on_collapse

if TYPE_CHECKING:
    from ..monitor import Monitor


class ChronoMoELightningCallback(Callback):
    """Records the routing of the LightningModule into ``monitor``.

    Args:
        monitor: the :class:`~chronomoe.Monitor` to attach and feed.
        every_n_steps: snapshot cadence in optimizer steps (default: the
            trainer's ``log_every_n_steps``).
        stop_on_collapse: stop fitting when a layer becomes collapse_confirmed.
        attach_options: passed to :meth:`~chronomoe.Monitor.attach`.
    """

    def __init__(
        self,
        monitor: Monitor,
        *,
        every_n_steps: int | None = None,
        stop_on_collapse: bool = False,
        **attach_options: Any,
    ) -> None:
        self.monitor = monitor
        self.every_n_steps = every_n_steps
        self.attach_options = attach_options
        self._last_step: int | None = None
        self._steps_since_snapshot = 0
        if stop_on_collapse:
            subscribe_stop_on_collapse(monitor)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.monitor.attach(pl_module, **self.attach_options)
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch before the optimizer step
            return
        self._last_step = step
        self.monitor.step(step)
        self._steps_since_snapshot += 1
        # Lightning sets log_every_n_steps on the trainer at run time; its class does not declare it.
        if step % (self.every_n_steps or trainer.log_every_n_steps) == 0:  # type: ignore[attr-defined]
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            self._snapshot(trainer, step, None if loss is None else float(loss))
        if self.monitor.should_stop:
            trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._steps_since_snapshot:
            self._snapshot(trainer, trainer.global_step, None)
        self.monitor.detach()

    def _snapshot(self, trainer: Trainer, step: int, train_loss: float | None) -> None:
        val_loss = trainer.callback_metrics.get("val_loss")
        self.monitor.snapshot(step, train_loss=train_loss, val_loss=None if val_loss is None else float(val_loss))
        self._steps_since_snapshot = 0

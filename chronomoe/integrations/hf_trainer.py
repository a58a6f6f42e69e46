"""ChronoMoE in the ``transformers`` Trainer: a callback, no changes to the training code.

Usage::

    monitor = Monitor("run1", output_dir="runs", model_name="my-moe")
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[ChronoMoECallback(monitor, stop_on_collapse=True)])
    trainer.train()

The callback attaches the monitor to the Trainer's model when training
begins (:meth:`chronomoe.Monitor.attach`), ends the monitor's step after each
optimizer step, and takes a snapshot at the Trainer's logging cadence
(``logging_steps``) with the logged training loss and the latest evaluation
loss. Steps after the last log are snapshotted when training ends, and the
hooks are removed then. Whenever ``monitor.should_stop`` is set (by
``stop_on_collapse``, or by any handler calling
:meth:`~chronomoe.Monitor.request_stop`), it sets
``control.should_training_stop`` and the Trainer stops after the current step.
The monitor's files stay open: call ``monitor.close()`` when done with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import stop_on_collapse as subscribe_stop_on_collapse

if TYPE_CHECKING:
    from ..monitor import Monitor


class ChronoMoECallback(TrainerCallback):
    """Records the routing of the Trainer's model into ``monitor``.

    Args:
        monitor: the :class:`~chronomoe.Monitor` to attach and feed.
        stop_on_collapse: stop training when a layer becomes collapse_confirmed.
        attach_options: passed to :meth:`~chronomoe.Monitor.attach`
            (``modules=``, ``extractor=`` for models it does not recognise).
    """

    def __init__(self, monitor: Monitor, *, stop_on_collapse: bool = False, **attach_options: Any) -> None:
        self.monitor = monitor
        self.attach_options = attach_options
        self.val_loss: float | None = None
        self._steps_since_snapshot = 0
        if stop_on_collapse:
            subscribe_stop_on_collapse(monitor)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        self.monitor.attach(model, **self.attach_options)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.monitor.step(state.global_step)
        self._steps_since_snapshot += 1
        self._stop_if_asked(control)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self.val_loss = float(metrics["eval_loss"])

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # Training logs carry "loss"; evaluation and end-of-training logs do not.
        if logs and "loss" in logs and self._steps_since_snapshot:
            self._snapshot(state.global_step, float(logs["loss"]))
        self._stop_if_asked(control)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._steps_since_snapshot:
            self._snapshot(state.global_step, None)
        self.monitor.detach()

    def _snapshot(self, step: int, train_loss: float | None) -> None:
        self.monitor.snapshot(step, train_loss=train_loss, val_loss=self.val_loss)
        self._steps_since_snapshot = 0

    def _stop_if_asked(self, control: TrainerControl) -> None:
        if self.monitor.should_stop:
            control.should_training_stop = True

"""TensorBoard sink: each snapshot's per-layer metrics as scalars, each alert transition as text.

Usage::

    sink = TensorBoardSink("tb_logs/run1")
    monitor.bus.connect(sink)

Tags (``prefix`` defaults to ``chronomoe/``; INFER snapshots add ``infer/``
after it), all at the snapshot's step:

* ``<prefix>n_effective/layer_<id>``: Neff (experts);
* ``<prefix>top2_share/layer_<id>``: share of the two busiest experts;
* ``<prefix>dead_experts/layer_<id>``: experts with no token in the window;
* ``<prefix>alert_state/layer_<id>``: 0 nominal, 1 pre_collapse, 2 collapse_confirmed;
* ``<prefix>transitions/layer_<id>`` (text): one line per alert transition.

A layer without data in a window gets its state scalar only. Writes go
through ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard``
package: ``pip install 'chronomoe[tensorboard]'``) and are flushed after
every snapshot, so TensorBoard shows them while the run trains.
"""

from __future__ import annotations

import os
from typing import Any

from ..alerts import AlertTransition
from ..snapshots import SystemSnapshot
from .trackers import STATE_LEVELS, transition_text


class TensorBoardSink:
    """Writes snapshots and transitions from a bus to TensorBoard.

    Args:
        log_dir: TensorBoard run folder (a ``SummaryWriter`` is created and
            owned: :meth:`close` closes it). Ignored when ``writer`` is given.
        writer: an existing ``SummaryWriter`` (or anything with ``add_scalar``,
            ``add_text`` and ``flush``) to share with other logging.
        prefix: start of every tag.
    """

    def __init__(
        self, log_dir: str | os.PathLike[str] | None = None, *, writer: Any = None, prefix: str = "chronomoe/"
    ) -> None:
        self._owns_writer = writer is None
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(None if log_dir is None else str(log_dir))
        self.writer = writer
        self.prefix = prefix

    def _tag(self, mode: str, name: str, layer_id: int) -> str:
        return f"{self.prefix}{'' if mode == 'TRAIN' else mode.lower() + '/'}{name}/layer_{layer_id}"

    def on_snapshot(self, snapshot: SystemSnapshot) -> None:
        step, mode = snapshot.step, snapshot.mode
        for layer in snapshot.layers:
            self.writer.add_scalar(
                self._tag(mode, "alert_state", layer.layer_id), STATE_LEVELS[layer.alert_state], step
            )
            if layer.no_data:
                continue
            self.writer.add_scalar(self._tag(mode, "n_effective", layer.layer_id), layer.n_effective, step)
            self.writer.add_scalar(self._tag(mode, "top2_share", layer.layer_id), layer.top2_share, step)
            self.writer.add_scalar(self._tag(mode, "dead_experts", layer.layer_id), layer.dead_expert_count, step)
        self.writer.flush()

    def on_transition(self, transition: AlertTransition) -> None:
        self.writer.add_text(
            self._tag(transition.mode, "transitions", transition.layer_id), transition_text(transition), transition.step
        )

    def close(self) -> None:
        """Flush, and close the writer if this sink created it."""
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()

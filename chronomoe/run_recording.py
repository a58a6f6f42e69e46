"""RunRecording: the run folder a Monitor writes, and which steps it holds.

Made by the :class:`~chronomoe.Monitor` when it has an ``output_dir``:

* it claims ``output_dir/run_id`` under the config's ``on_existing_run``
  (:func:`~chronomoe.io.run_folder.claim_run_folder`): a folder holding a
  recorded run is refused by default, resumed, or left for a new one;
* it writes the manifest (for a resumed run: the folder's own, with this
  resume appended to its ``resumes``) and owns the
  :class:`~chronomoe.io.TelemetryWriter`;
* it keeps, per JSONL file, the last step the folder held when this
  recording began (:meth:`check_after_recorded` refuses a step at or before
  it, so a resumed run never records a step twice) and the last step written
  since (:meth:`written_steps`, saved in the Monitor's ``state_dict``);
* resuming from a checkpoint taken before the folder's last records,
  :meth:`rewind` moves the records written after the checkpoint aside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import MonitorConfig
from .errors import InvalidInputError
from .io import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, SNAPSHOTS_FILE, TelemetryWriter, create_run_manifest
from .io.run_folder import claim_run_folder, move_records_after, resumed_manifest

RECORDED_AT_SNAPSHOTS = (SNAPSHOTS_FILE, ALERTS_FILE, DECISIONS_FILE)
"""Files written at snapshot steps only (snapshots, their transitions, the decisions made on them)."""


class RunRecording:
    """The run folder of one Monitor (see the module docstring).

    Args:
        run_id: the requested run id; :attr:`run_id` is the one recorded
            (another after ``on_existing_run="new"``).
        output_dir: the parent folder of run folders.
        config: the Monitor's configuration (``on_existing_run``, ``storage``,
            ``fsync``, ``io_errors``, and what the manifest records).
        rank: the writing process's global rank (names Parquet parts; 0
            outside torch.distributed).

    Raises :class:`~chronomoe.errors.InvalidInputError` before writing
    anything when the folder holds a run that ``on_existing_run`` refuses, or
    whose manifest records other alert rules than a resumed run's.
    """

    def __init__(self, run_id: str, output_dir: Path, config: MonitorConfig, rank: int = 0) -> None:
        folder = claim_run_folder(output_dir, run_id, config.on_existing_run)
        self.run_id = folder.run_id
        self.run_dir = folder.run_dir
        manifest = run_manifest(self.run_id, config)
        if folder.resumed:
            manifest = resumed_manifest(folder.run_dir, manifest)
        self.writer = _writer(self.run_id, output_dir, config, rank)
        self.writer.write_manifest(manifest)
        self.manifest = manifest
        self._recorded_steps = dict(folder.recorded_steps)  # the floor new steps must be above
        self._written_steps = dict(folder.recorded_steps)  # what the folder holds, growing as events are written

    def check_after_recorded(self, file_name: str, step: int) -> None:
        """Refuse ``step`` when the folder held records of ``file_name`` up to it or beyond before this
        recording began (or, after :meth:`rewind`, when the checkpoint was taken)."""
        last = self._recorded_steps.get(file_name)
        if last is not None and step <= last:
            raise InvalidInputError(
                "step",
                step,
                f"{self.run_dir} already holds records up to step {last} ({file_name}); a resumed run continues "
                "after them. To record those steps again from an earlier checkpoint, call "
                "monitor.load_state_dict() with the checkpoint's state first: the records after it are moved aside",
            )

    def events_written(self, last_step: int) -> None:
        """Note that events up to ``last_step`` were written (events are written in step order)."""
        self._written_steps[EVENTS_FILE] = last_step

    def written_steps(self, last_snapshot_step: int | None) -> dict[str, int]:
        """Per JSONL file, the last step the folder holds (-1: none), given this run's last snapshot step."""
        at_snapshots = -1 if last_snapshot_step is None else last_snapshot_step
        return {
            name: max(self._written_steps.get(name, -1), at_snapshots if name in RECORDED_AT_SNAPSHOTS else -1)
            for name in (EVENTS_FILE, *RECORDED_AT_SNAPSHOTS)
        }

    def rewind(self, checkpoint_run_id: object, written_steps: dict[str, int]) -> None:
        """Go back to a checkpoint whose :meth:`written_steps` were ``written_steps``: move the folder's
        records after them to ``<file>.superseded`` (WARNING per file) and continue after them.

        Raises :class:`~chronomoe.errors.InvalidInputError`, moving nothing,
        when the checkpoint is another run's.
        """
        if checkpoint_run_id != self.run_id:
            raise InvalidInputError(
                "state.run_id", checkpoint_run_id, f"is another run's checkpoint than this run's {self.run_id!r}"
            )
        move_records_after(self.run_dir, written_steps)
        self._recorded_steps = dict(written_steps)
        self._written_steps = dict(written_steps)


def run_manifest(run_id: str, config: MonitorConfig) -> dict[str, Any]:
    """A new manifest of run ``run_id`` recorded under ``config`` (see :func:`~chronomoe.io.create_run_manifest`)."""
    return create_run_manifest(
        run_id,
        config.model_name,
        config.training_config,
        rules=config.rules.model_dump(),
        monitor_config=config.resolved(),
    )


def _writer(run_id: str, output_dir: Path, config: MonitorConfig, rank: int) -> TelemetryWriter:
    """The run folder's writer for ``config.storage``."""
    if config.storage == "parquet":
        from .io.parquet_writer import ParquetRunWriter

        return ParquetRunWriter(
            run_id,
            output_dir,
            rank=rank,
            fsync=config.fsync,
            bytes_per_sync=config.bytes_per_sync,
            on_error=config.io_errors,
        )
    return TelemetryWriter(
        run_id, output_dir, fsync=config.fsync, bytes_per_sync=config.bytes_per_sync, on_error=config.io_errors
    )

"""``chronomoe watch``: follow a run folder while training writes it, like ``tail -f``.

:func:`watch_run` polls ``snapshots.jsonl`` and ``decisions.jsonl`` every
``interval`` seconds (:class:`~chronomoe.watch.follow.JsonlFollower`: it
starts from the files' ends, never returns a line before its newline, and
reads a file again when it is replaced), folds the new records into a
:class:`~chronomoe.watch.state.WatchState` and shows it
(:mod:`~chronomoe.watch.view`):

* on a terminal, one screen redrawn in place with rich (``chronomoe[watch]``);
  it works over SSH in any terminal that moves the cursor (no mouse, no
  alternate screen);
* otherwise (output piped or logged), or with ``plain``: one line per
  transition and per snapshot, and one per poll for the controller's actions.

A bad record is skipped and counted on the status line; Ctrl-C ends the
watch with exit code 0. Only JSONL runs can be followed: a Parquet run
(``Monitor(storage="parquet")``) is refused with a one-line error.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from ..errors import InvalidInputError
from ..io import DECISIONS_FILE, SNAPSHOTS_FILE
from ..io.parse_errors import PARSE_ERRORS, describe_parse_error
from ..io.run_reader import detect_storage
from ..report.decision_rows import parse_decision_line
from ..report.rows import parse_snapshot_line
from .follow import JsonlFollower
from .state import WatchState
from .view import decisions_line, screen, snapshot_line, transition_line

DECISIONS_AT_START = 500
"""Lines of decisions.jsonl read at start (a PressureController writes one per layer and snapshot)."""

__all__ = ["WatchState", "watch_run"]


class _Watcher:
    """The followers of one run folder and the state they feed."""

    def __init__(self, run_dir: Path, mode: str, history: int) -> None:
        self.run_dir = run_dir
        self.state = WatchState(mode=mode, history=history)
        self.snapshots = JsonlFollower(run_dir / SNAPSHOTS_FILE, start_lines=history)
        self.decisions = JsonlFollower(run_dir / DECISIONS_FILE, start_lines=DECISIONS_AT_START)
        self.skipped = 0
        self.last_problem = ""
        self.last_record_time: float | None = None

    def poll(self) -> tuple[list[str], Counter[str]]:
        """Read what arrived; returns the plain lines it makes (transitions, snapshots) and the acting decisions."""
        lines: list[str] = []
        for line in self.snapshots.poll():
            try:
                row = parse_snapshot_line(line)
            except PARSE_ERRORS as error:
                self._skip(SNAPSHOTS_FILE, error)
                continue
            transitions = self.state.add_snapshot(row)
            if row.mode == self.state.mode:
                lines.extend(transition_line(transition) for transition in transitions)
                lines.append(snapshot_line(self.state))
            self.last_record_time = time.time()
        actions: Counter[str] = Counter()
        for line in self.decisions.poll():
            try:
                decision = parse_decision_line(line)
            except PARSE_ERRORS as error:
                self._skip(DECISIONS_FILE, error)
                continue
            if self.state.add_decision(decision):
                actions[decision.action] += 1
        return lines, actions

    def _skip(self, name: str, error: Exception) -> None:
        self.skipped += 1
        self.last_problem = f"skipped a bad record of {name}: {describe_parse_error(error)}"

    def status(self) -> str:
        if not self.snapshots.path.is_file():
            return f"waiting for {SNAPSHOTS_FILE} to appear"
        parts = [f"{SNAPSHOTS_FILE}: {self.snapshots.offset / 2**20:,.1f} MiB"]
        if self.last_record_time is not None:
            parts.append(f"last snapshot {time.time() - self.last_record_time:,.0f} s ago")
        if self.snapshots.waiting_bytes:
            parts.append(f"last line incomplete ({self.snapshots.waiting_bytes:,} bytes): waiting for its end")
        if self.skipped:
            parts.append(f"{self.skipped} bad records skipped; last: {self.last_problem}")
        return "; ".join(parts)


def watch_run(
    run_dir: str | os.PathLike[str],
    *,
    mode: str = "TRAIN",
    interval: float = 1.0,
    history: int = 60,
    plain: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Follow ``run_dir`` until Ctrl-C (see the module docstring); returns the exit code, 0.

    Raises :class:`~chronomoe.errors.InvalidInputError` when ``run_dir`` is not a
    folder or holds a Parquet run, and ImportError when a terminal view is wanted without rich.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise InvalidInputError("RUN_DIR", str(path), "is not a folder")
    if detect_storage(path) == "parquet":
        raise InvalidInputError(
            "RUN_DIR", str(path), "is a Parquet run; watch follows JSONL runs only (chronomoe summary reads it)"
        )
    output = stream if stream is not None else sys.stdout
    watcher = _Watcher(path, mode, history)
    try:
        if plain or not output.isatty():
            _follow_plain(watcher, interval, output)
        else:
            _follow_screen(watcher, interval, output)
    except KeyboardInterrupt:
        pass
    step = watcher.state.last_step
    print(f"stopped following {path} (last step {'-' if step is None else step})", file=output, flush=True)
    return 0


def _follow_plain(watcher: _Watcher, interval: float, output: TextIO) -> None:
    lines, _ = watcher.poll()  # the files' ends: shown as the current state, not replayed line by line
    print(f"following {watcher.run_dir}: {watcher.status()}", file=output)
    if watcher.state.last_step is not None:
        print(snapshot_line(watcher.state), file=output)
    output.flush()
    while True:
        time.sleep(interval)
        lines, actions = watcher.poll()
        if actions:
            lines.append(decisions_line(watcher.state.last_step, actions))
        if lines:
            print("\n".join(lines), file=output, flush=True)


def _follow_screen(watcher: _Watcher, interval: float, output: TextIO) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=output)
    watcher.poll()
    name = str(watcher.run_dir)
    with Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            live.update(
                screen(watcher.state, name, (console.size.width, console.size.height), watcher.status()), refresh=True
            )
            time.sleep(interval)
            watcher.poll()

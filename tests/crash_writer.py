"""The process the kill loop of ``tests/test_reliability.py`` SIGKILLs: a Monitor writing telemetry nonstop.

Run as ``python tests/crash_writer.py OUTPUT_DIR``, it is a fork
server, so that each of the many writer processes starts in milliseconds
instead of re-importing chronomoe. It prints ``ready``, then for each line
``start SESSION MODE PROGRESS_PATH`` on stdin forks a writer, prints
``pid PID``, waits for it to die and prints ``exit STATUS`` (the raw
``waitpid`` status).

A writer (session ``SESSION``) appends to ``OUTPUT_DIR/crash`` through
``Monitor.observe``, one window after another: each window writes its events
in one batch, then its transitions, then its snapshot. After each
``observe`` returns it appends the number of windows completed to
``PROGRESS_PATH`` with one unbuffered ``os.write``, so the count survives the
kill. ``MODE`` is ``direct`` (the real files), ``slow`` (a simulated slow
filesystem that accepts at most ``SLOW_PIECE_BYTES`` per ``write()`` call
after a pause, so a kill often lands inside a batch and tears it) or
``tear`` (the writer SIGKILLs itself in the middle of writing its
``TEAR_AT_SNAPSHOT``-th snapshot: a deterministic crash mid-write). ``parquet`` and
``parquet-slow`` write the run with ``storage="parquet"`` (parts of
``PARQUET_ROW_GROUPS_PER_PART`` row groups, so kills also land in sealing),
directly or on the slow filesystem.

The records are a pure function of ``(session, window)`` (:func:`window_events`),
so the test knows what every line on disk must hold.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from itertools import count

import numpy as np

from chronomoe import AlertRules, Monitor, RoutingEvent
from chronomoe.io import parquet_writer, writer
from chronomoe.io.lines import open_for_append
from chronomoe.io.paths import SNAPSHOTS_FILE

RUN_ID = "crash"
N_LAYERS = 4
N_EXPERTS = 64
STEPS_PER_WINDOW = 8
SESSION_STEPS = 1_000_000
"""Session ``s`` records steps ``s * SESSION_STEPS + 1 ...``: steps never repeat across sessions."""
RULES = AlertRules(pre_persistence=1, confirm_persistence=2)
"""Quick persistence, so the collapsing layer makes transitions every few windows."""
PAUSE_BETWEEN_WINDOWS_S = 0.002
MAX_SESSION_S = 30.0
"""A writer that nobody killed (a test that failed midway) exits after this long."""
SLOW_PIECE_BYTES = 512
SLOW_WRITE_PAUSE_S = 0.001
TEAR_AT_SNAPSHOT = 3
MODES = ("direct", "slow", "tear", "parquet", "parquet-slow")
PARQUET_ROW_GROUPS_PER_PART = 4


def window_step(session: int, window: int) -> int:
    """The step of the window's snapshot (its last step)."""
    return session * SESSION_STEPS + (window + 1) * STEPS_PER_WINDOW


def window_events(session: int, window: int) -> list[RoutingEvent]:
    """The window's events, step-major then layer: layer 0 alternates 4 windows collapsed, 4 balanced."""
    rng = np.random.default_rng((session, window))
    collapsed = window % 8 < 4
    first_step = window_step(session, window) - STEPS_PER_WINDOW + 1
    events = []
    for step in range(first_step, first_step + STEPS_PER_WINDOW):
        for layer in range(N_LAYERS):
            if layer == 0 and collapsed:
                counts = np.zeros(N_EXPERTS, dtype=np.int64)
                counts[:2] = rng.integers(100, 200, 2)
            else:
                counts = rng.integers(1, 20, N_EXPERTS)
            events.append(
                RoutingEvent(
                    run_id=RUN_ID,
                    step=step,
                    layer_id=layer,
                    n_experts=N_EXPERTS,
                    top_k=2,
                    expert_token_counts=counts,
                    timestamp=float(step),
                )
            )
    return events


class SlowShortWriteFile:
    """An open file on a slow filesystem: each ``write`` pauses, then accepts at most ``SLOW_PIECE_BYTES``."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def write(self, data) -> int:
        time.sleep(SLOW_WRITE_PAUSE_S)
        return self.handle.write(data[:SLOW_PIECE_BYTES])

    def __getattr__(self, name):
        return getattr(self.handle, name)


class SelfKillingFile:
    """``snapshots.jsonl`` of a process that dies (SIGKILL) after writing half of its ``TEAR_AT_SNAPSHOT``-th line."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.writes = 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == TEAR_AT_SNAPSHOT:
            self.handle.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def write_continuously(output_dir: str, session: int, mode: str, progress_path: str) -> None:
    """Record windows of ``session`` until killed (or ``MAX_SESSION_S`` have passed)."""
    # The writer opens its files through writer.open_for_append: replacing it there wraps every file it opens.
    if mode == "slow":
        writer.open_for_append = lambda path: SlowShortWriteFile(open_for_append(path))
    elif mode == "tear":
        writer.open_for_append = lambda path: (
            SelfKillingFile(open_for_append(path)) if path.name == SNAPSHOTS_FILE else open_for_append(path)
        )
    elif mode == "parquet-slow":
        opener = parquet_writer.open_part_for_append
        parquet_writer.open_part_for_append = lambda path: SlowShortWriteFile(opener(path))
    storage = "parquet" if mode.startswith("parquet") else "jsonl"
    progress = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    # Every session appends to the one run folder, after the steps of the sessions before it.
    monitor = Monitor(
        RUN_ID,
        output_dir,
        model_name="crash-writer",
        rules=RULES,
        lens=None,
        controller=None,
        storage=storage,
        on_existing_run="resume",
    )
    if storage == "parquet":
        monitor.writer.row_groups_per_part = PARQUET_ROW_GROUPS_PER_PART
    deadline = time.monotonic() + MAX_SESSION_S
    for window in count():
        if time.monotonic() > deadline:
            return
        monitor.observe(window_events(session, window), window_step(session, window))
        os.write(progress, b"%d\n" % (window + 1))
        time.sleep(PAUSE_BETWEEN_WINDOWS_S)


def serve(output_dir: str) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        command, session, mode, progress_path = line.split()
        assert command == "start" and mode in MODES, line
        pid = os.fork()
        if pid == 0:
            try:
                write_continuously(output_dir, int(session), mode, progress_path)
            finally:
                os._exit(1)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])

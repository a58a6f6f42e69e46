"""A Parquet run killed at random moments loses no finished row group, and a torn part is detected and recovered.

The writer processes are ``tests/crash_writer.py``'s (a ``Monitor`` with
``storage="parquet"`` logging events, snapshots and transitions nonstop,
parts sealed every 4 row groups), SIGKILLed at random moments, each session
appending new parts to one run folder; half of them on a simulated slow
filesystem that accepts 512 bytes per ``write()``, so that kills land inside
frames. After each kill the run is read as it is (growing parts through
their frames, nothing changed on disk): every window a writer reported done
is there, at most the window in flight more, in order, and nothing else.
The next writer seals the parts the killed one left growing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import crash_writer
import numpy as np
from crash_writer import window_events, window_step
from test_reliability import ForkServer, SessionModel, record_key, windows_completed

from chronomoe.cli import main
from chronomoe.io.parquet_parts import PARTIAL_SUFFIX, TORN_SUFFIX
from chronomoe.io.run_reader import open_run

KILLS = 56


def session_records(model: SessionModel, windows: int) -> dict[str, list]:
    """The records of a session's first ``windows`` windows, by table."""
    records: dict[str, list] = {"routing_events": [], "snapshots": [], "alerts": []}
    for index in range(windows):
        events, snapshot = model.window(index)
        records["routing_events"] += events
        records["snapshots"].append(snapshot)
        records["alerts"] += snapshot.transitions
    return records


def on_disk(run_dir: Path) -> dict[str, list]:
    """The records of the run as it is on disk, by table (read without changing anything)."""
    if not run_dir.is_dir():
        return {"routing_events": [], "snapshots": [], "alerts": []}
    run = open_run(run_dir, "parquet")
    readers = {"routing_events": run.events, "snapshots": run.snapshots, "alerts": run.transitions}
    return {
        table: [record_key(record) for record in read()] if run.has(table) else [] for table, read in readers.items()
    }


def test_sigkill_at_random_moments_never_loses_a_finished_row_group_and_torn_parts_are_recovered(tmp_path, capsys):
    rng = np.random.default_rng(11)
    run_dir = tmp_path / crash_writer.RUN_ID
    survivors: dict[str, list] = {"routing_events": [], "snapshots": [], "alerts": []}
    server = ForkServer(tmp_path, tmp_path / "crash_writer.log")
    torn_seen = 0
    try:
        for session in range(KILLS):
            progress = tmp_path / f"progress-{session}"
            mode = ("parquet", "parquet-slow")[session % 2]
            pid = server.start(session, mode, progress)
            time.sleep(rng.uniform(0.05, 0.3 if mode == "parquet" else 0.45))
            os.kill(pid, signal.SIGKILL)
            status = server.exit_status()
            assert os.WIFSIGNALED(status), (tmp_path / "crash_writer.log").read_text()
            reported = windows_completed(progress)
            found = on_disk(run_dir)
            model = SessionModel(session)
            done = session_records(model, reported)
            in_flight = session_records(model, reported + 1)
            for table, keys in found.items():
                mine = keys[len(survivors[table]) :]
                assert keys[: len(survivors[table])] == survivors[table], f"{table}: an earlier record changed"
                expected_done = [record_key(record) for record in done[table]]
                expected_more = [record_key(record) for record in in_flight[table]]
                assert mine[: len(expected_done)] == expected_done, f"{table}: a finished row group is missing"
                assert mine == expected_more[: len(mine)], f"{table}: a record that was never written"
                survivors[table] = keys
            torn_seen += sum(1 for part in run_dir.rglob(f"*{PARTIAL_SUFFIX}") if part.stat().st_size and _torn(part))
    finally:
        server.close()
    assert torn_seen >= 3, "too few kills landed inside a frame"

    last_kill_tore_a_part = any(_torn(part) for part in run_dir.rglob(f"*{PARTIAL_SUFFIX}") if part.stat().st_size)
    capsys.readouterr()
    assert main(["validate", str(run_dir)]) == 0
    assert ("torn bytes" in capsys.readouterr().out) == last_kill_tore_a_part  # reported when there are any
    assert on_disk(run_dir) == survivors

    with crash_writer.Monitor(  # a last writer seals what the killed ones left growing
        crash_writer.RUN_ID,
        tmp_path,
        rules=crash_writer.RULES,
        lens=None,
        controller=None,
        storage="parquet",
        on_existing_run="resume",
    ) as monitor:
        monitor.observe(window_events(KILLS, 0), window_step(KILLS, 0))
    assert not list(run_dir.rglob(f"*{PARTIAL_SUFFIX}"))
    assert list(run_dir.rglob(f"*{TORN_SUFFIX}"))
    final = on_disk(run_dir)
    assert final["routing_events"] == survivors["routing_events"] + [record_key(e) for e in window_events(KILLS, 0)]


def _torn(part: Path) -> bool:
    from chronomoe.io.parquet_parts import scan_frames

    return scan_frames(part.read_bytes()).torn_bytes > 0

"""``chronomoe watch``: following a run folder that a background process is writing, torn lines, Ctrl-C.

The background process (``tests/watch_writer.py``) appends a recorded run's
lines to a fresh run folder one snapshot at a time, one snapshot line in two
halves; the watch runs as a subprocess, piped (plain lines) or on a
pseudo-terminal (the rich screen), and is stopped with SIGINT as a user's
Ctrl-C would.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chronomoe import Monitor
from chronomoe.controller import PressureController
from chronomoe.watch.follow import JsonlFollower
from chronomoe.watch.view import action_lines, sparkline

pytest.importorskip("rich")

CHRONOMOE = [sys.executable, "-m", "chronomoe.cli"]
WRITER = Path(__file__).with_name("watch_writer.py")
BALANCED = [100] * 8
COLLAPSED = [700, 250, 20, 10, 10, 5, 5, 0]
SNAPSHOTS = 12
TORN_AT = 6
DELAY = 0.15


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> Path:
    """A finished run: layer 1 collapses from the 3rd snapshot, a PressureController acting on it."""
    output = tmp_path_factory.mktemp("source")
    with Monitor("source", output_dir=output, lens=None, controller=PressureController()) as monitor:
        for position in range(SNAPSHOTS):
            window = [BALANCED, COLLAPSED if position >= 2 else BALANCED]
            monitor.observe(window, step=10 * (position + 1), train_loss=3.0 - 0.01 * position)
    return output / "source"


def start_writer(recorded_run: Path, target: Path) -> subprocess.Popen[str]:
    command = [sys.executable, str(WRITER), str(recorded_run), str(target), str(DELAY), str(TORN_AT)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_a_piped_watch_prints_every_snapshot_and_transition_once_and_ends_cleanly_on_ctrl_c(recorded_run, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    watch = subprocess.Popen(
        [*CHRONOMOE, "watch", str(target), "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    assert "waiting for snapshots.jsonl" in watch.stdout.readline()  # watching before the job writes
    writer = start_writer(recorded_run, target)
    assert writer.communicate(timeout=120)[0].strip() == "done"
    time.sleep(0.5)  # a few more polls after the last line
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    steps = [int(step) for step in re.findall(r"^step (\d+): \d+ layers", out, re.M)]
    assert steps == sorted(set(steps)) and steps[-1] == 10 * SNAPSHOTS
    assert 10 * TORN_AT in steps  # the snapshot written in two halves, read once, whole
    assert "step 50 layer 1: nominal -> pre_collapse" in out
    assert "step 70 layer 1: pre_collapse -> collapse_confirmed" in out
    assert re.search(r"^step \d+: controller adjust 1$", out, re.M)
    assert out.rstrip().endswith(f"stopped following {target} (last step {10 * SNAPSHOTS})")


def read_terminal(master: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            return
        into.extend(chunk)


def test_on_a_terminal_the_watch_redraws_a_screen_of_the_layers_and_ends_cleanly_on_ctrl_c(recorded_run, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    master, terminal = pty.openpty()
    os.set_blocking(master, False)
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    watch = subprocess.Popen(
        [*CHRONOMOE, "watch", str(target), "--interval", "0.05"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=environment,
    )
    os.close(terminal)
    screen = bytearray()
    wait_until(lambda: read_terminal(master, screen) or b"waiting for snapshots.jsonl" in screen)
    writer = start_writer(recorded_run, target)
    assert writer.communicate(timeout=120)[0].strip() == "done"
    wait_until(lambda: read_terminal(master, screen) or b"last step 120" in screen)
    watch.send_signal(signal.SIGINT)
    watch.wait(timeout=60)
    read_terminal(master, screen)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert watch.returncode == 0
    assert "Traceback" not in text
    assert "Neff/n, last snapshots" in text and "collapse_confirmed" in text
    assert "pre_collapse -> collapse_confirmed" in text
    assert "controller pressure, decisions so far" in text
    assert text.rstrip().endswith(f"stopped following {target} (last step 120)")


def test_a_watch_of_a_missing_folder_is_one_line_on_stderr_with_exit_2(tmp_path):
    result = subprocess.run([*CHRONOMOE, "watch", str(tmp_path / "absent")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"chronomoe watch: error: RUN_DIR={str(tmp_path / 'absent')!r}: is not a folder"
    ]


def test_a_watch_of_a_parquet_run_is_refused_in_one_line_with_exit_2(tmp_path):
    pytest.importorskip("pyarrow")
    with Monitor("run", output_dir=tmp_path, lens=None, storage="parquet") as monitor:
        monitor.observe([[100] * 8], step=10)
    result = subprocess.run([*CHRONOMOE, "watch", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"chronomoe watch: error: RUN_DIR={str(tmp_path / 'run')!r}: is a Parquet run; watch follows JSONL runs "
        "only (chronomoe summary reads it)"
    ]


# -- the follower -------------------------------------------------------------------------------
def test_a_line_without_its_newline_is_returned_only_once_complete(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b":')
    follower = JsonlFollower(path, start_lines=10)
    assert follower.poll() == [b'{"a": 1}'] and follower.waiting_bytes == 5
    with open(path, "ab") as handle:
        handle.write(b" 2}\n")
    assert follower.poll() == [b'{"b": 2}'] and follower.waiting_bytes == 0
    assert follower.poll() == []


def test_the_first_poll_returns_only_the_last_lines_of_a_long_file(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(b"%d\n" % number for number in range(100_000)) + b"torn")
    assert JsonlFollower(path, start_lines=3).poll() == [b"99997", b"99998", b"99999"]


def test_a_replaced_file_is_followed_from_its_last_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"1\n2\n")
    follower = JsonlFollower(path, start_lines=1)
    assert follower.poll() == [b"2"]
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b"a\nb\nc\n")
    replacement.replace(path)
    assert follower.poll() == [b"c"]


def test_a_file_that_does_not_exist_yet_gives_nothing_until_it_appears(tmp_path):
    follower = JsonlFollower(tmp_path / "f.jsonl", start_lines=5)
    assert follower.poll() == []
    (tmp_path / "f.jsonl").write_bytes(b"x\n")
    assert follower.poll() == [b"x"]


# -- the view -----------------------------------------------------------------------------------
def test_a_sparkline_has_one_block_per_value_from_low_to_high_and_a_space_for_no_data():
    assert sparkline([0.0, 0.5, 1.0, float("nan"), 2.0]) == "▁▅█ █"


def test_acting_decisions_are_listed_per_step_newest_first():
    from chronomoe.report.decision_rows import DecisionRow
    from chronomoe.watch.state import WatchState

    state = WatchState()
    for step, layer, action in [(10, 3, "adjust"), (20, 5, "adjust"), (20, 1, "adjust"), (20, 2, "abstain")]:
        state.add_decision(DecisionRow("pressure", step, "TRAIN", layer, action, True, False, 0.5, 0.1))
    assert action_lines(state) == ["step 20: abstain on layer 2; adjust on layers 1, 5", "step 10: adjust on layer 3"]
    assert state.action_totals == {"adjust": 3, "abstain": 1}

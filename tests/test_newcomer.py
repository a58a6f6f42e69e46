"""What tripped a new user (issue 13), one test per trip-up, each showing the behaviour that replaced it.

A reused run id is in ``tests/test_run_folders.py``; README's figures and
tables are checked against their commands in ``tests/test_readme.py``.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from chronomoe import Monitor, load_events, load_snapshots
from chronomoe.cli import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_NO, EXIT_OK, command_line, main
from chronomoe.io.paths import SNAPSHOTS_FILE

REPOSITORY = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- Monitor.close() and the steps after the last snapshot ---------------------------------------
def recording_monitor(tmp_path) -> Monitor:
    monitor = Monitor("tail", tmp_path, n_experts=[4, 4], lens=None, controller=None)
    for step in range(1, 8):
        for layer_id in (0, 1):
            monitor.record(layer_id, indices=torch.tensor([[0], [1], [2]]))
        monitor.step(step)
        if step == 5:
            monitor.snapshot(step)
    return monitor


def test_close_writes_the_events_of_steps_after_the_last_snapshot_and_says_how_many(tmp_path, caplog):
    monitor = recording_monitor(tmp_path)
    with caplog.at_level(logging.WARNING):
        monitor.close()
    assert sorted({event.step for event in load_events(tmp_path / "tail")}) == list(range(1, 8))
    assert [snapshot.step for snapshot in load_snapshots(tmp_path / "tail")] == [5]
    assert "2 steps (6..7) ended after the last snapshot are in no snapshot" in caplog.text
    assert "their events are written to routing_events.jsonl" in caplog.text


def test_close_counts_forwards_recorded_after_the_last_step(tmp_path, caplog):
    monitor = recording_monitor(tmp_path)
    monitor.record(0, indices=torch.tensor([[3]]))
    with caplog.at_level(logging.WARNING):
        monitor.close()
    assert "1 record() calls after the last step() belong to no step" in caplog.text


def test_close_after_a_snapshot_at_the_last_step_says_nothing(tmp_path, caplog):
    monitor = recording_monitor(tmp_path)
    monitor.snapshot(7)
    with caplog.at_level(logging.WARNING):
        monitor.close()
    assert "closing" not in caplog.text and len(load_snapshots(tmp_path / "tail")) == 2


# -- validate checks what a reader relies on ------------------------------------------------------
def test_validate_calls_a_folder_holding_only_its_manifest_invalid(capsys, tmp_path):
    Monitor("empty", tmp_path, lens=None).close()
    code, out, _ = run_cli(capsys, "validate", tmp_path / "empty")
    assert code == EXIT_NO
    assert "note: no snapshots.jsonl: summary and report have nothing to read" in out
    assert out.splitlines()[-1] == "invalid: nothing recorded (no routing event, snapshot, transition or decision)"


def test_validate_finds_events_of_a_layer_out_of_step_order(capsys, make_run):
    run_dir = make_run()
    events_path = run_dir / "routing_events.jsonl"
    lines = events_path.read_bytes().splitlines(keepends=True)
    lines[0], lines[3] = lines[3], lines[0]  # layer 0 of steps 1 and 2
    events_path.write_bytes(b"".join(lines))
    code, out, _ = run_cli(capsys, "validate", run_dir)
    assert code == EXIT_NO
    assert "routing_events.jsonl:4: step 1 (mode=TRAIN layer_id=0) is not after step 2 (line 1)" in out


# -- corrupt lines: seen, counted, and a non-zero exit ---------------------------------------------
def corrupt_a_snapshot_line(run_dir: Path, line: int = 2) -> None:
    path = run_dir / SNAPSHOTS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = b'{"step": 5, "layers": [\n'
    path.write_bytes(b"".join(lines))


def test_summary_skips_a_corrupt_snapshot_line_says_so_with_a_count_and_exits_2(capsys, make_run):
    run_dir = make_run()
    corrupt_a_snapshot_line(run_dir)
    code, out, err = run_cli(capsys, "summary", run_dir)
    assert code == EXIT_ERROR
    assert "11 TRAIN snapshots" in out
    assert "snapshots.jsonl: 1 corrupt line(s) skipped (first: line 2:" in err


def test_report_skips_a_corrupt_snapshot_line_says_so_and_exits_2(capsys, make_run, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = make_run()
    corrupt_a_snapshot_line(run_dir, 3)
    code, _, err = run_cli(capsys, "report", run_dir, "-o", tmp_path / "report")
    assert code == EXIT_ERROR and (tmp_path / "report" / "report.html").is_file()
    assert "1 corrupt line(s) skipped (first: line 3:" in err


def test_summary_reads_only_snapshots_and_replay_refuses_a_corrupt_event_line(capsys, make_run):
    run_dir = make_run()
    events_path = run_dir / "routing_events.jsonl"
    lines = events_path.read_bytes().splitlines(keepends=True)
    lines[5] = b"not json\n"
    events_path.write_bytes(b"".join(lines))
    assert run_cli(capsys, "summary", run_dir)[0] == EXIT_NO  # the collapsed run's answer, from snapshots.jsonl
    code, _, err = run_cli(capsys, "replay", run_dir)
    assert code == EXIT_ERROR and "routing_events.jsonl:6:" in err


# -- the command line ---------------------------------------------------------------------------
def test_a_reader_that_goes_away_ends_the_command_quietly_as_unix_tools_do(make_run):
    run_dir = make_run()
    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "chronomoe.cli", "summary", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader_gone.stdout.close()  # as `head -n 1` does after its line; the command has not printed yet
    stderr = reader_gone.stderr.read()
    assert reader_gone.wait() == EXIT_BROKEN_PIPE
    assert stderr == b""


@pytest.mark.parametrize("mode", ["infer", "Infer", "INFER"])
def test_mode_is_read_in_any_case(capsys, make_run, mode):
    code, out, _ = run_cli(capsys, "summary", make_run(infer=True), "--mode", mode)
    assert code == EXIT_NO and "12 INFER snapshots" in out


def test_hints_name_the_command_as_this_shell_reaches_it(tmp_path, monkeypatch):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert command_line() == "python -m chronomoe.cli"  # no chronomoe script in this installation
    script = bin_dir / "chronomoe"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert command_line() == os.path.join(".venv", "bin", "chronomoe")  # installed, not on the PATH
    monkeypatch.setenv("PATH", str(bin_dir))
    assert command_line() == "chronomoe"  # on the PATH (an activated virtualenv)


def test_a_demo_too_short_to_show_a_collapse_explains_itself_and_exits_0(tmp_path):
    from chronomoe.demo import run_demo

    with redirect_stdout(io.StringIO()) as stdout:
        code = run_demo(str(tmp_path), steps=5, quiet=True)
    assert code == EXIT_OK
    assert "demo-collapse: no COLLAPSE_CONFIRMED in 5 steps, too few to show one" in stdout.getvalue()


# -- installing ---------------------------------------------------------------------------------
def test_building_the_package_prints_no_setuptools_warning(tmp_path):
    """``pip install`` builds a wheel: its build must not warn (the license table, undeclared data folders)."""
    pytest.importorskip("setuptools", minversion="77")
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "chronomoe", "controller", "lens", "specs"):
        copy = shutil.copytree if (REPOSITORY / name).is_dir() else shutil.copyfile
        copy(REPOSITORY / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "Warning" in line]
    assert warnings == []
    [wheel] = tmp_path.glob("chronomoe-*.whl")
    names = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True, check=True
    ).stdout
    assert "chronomoe/specs/schemas/RoutingEvent.schema.json" in names
    assert "chronomoe/specs/scenarios/" in names

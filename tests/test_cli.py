"""The ``chronomoe`` command: each subcommand's output and exit code, help, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest

from chronomoe.cli import EXIT_ERROR, EXIT_NO, EXIT_OK, main
from chronomoe.schemas import RECORD_MODELS, load_schema


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse's own exits: --help, bad arguments
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- help ------------------------------------------------------------------------------------
SUBCOMMAND_OPTIONS = {
    "demo": ["--output-dir", "--steps", "--seed", "--quiet"],
    "summary": ["RUN_DIR", "--mode", "collapse_confirmed"],
    "replay": ["RUN_DIR", "--rules", "--window", "--out"],
    "report": ["RUN_DIR", "--output-dir", "--mode", "--layers", "--max-columns", "--no-figures", "chronomoe[report]"],
    "watch": ["RUN_DIR", "--interval", "--history", "--plain", "Ctrl-C", "chronomoe[watch]"],
    "validate": ["RUN_DIR", "JSON Schema", "Exit code"],
    "schema": ["NAME", "RoutingEvent", "SystemSnapshot"],
}


def test_top_level_help_lists_every_subcommand_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for name in SUBCOMMAND_OPTIONS:
        assert name in out
    assert "Exit codes" in out


@pytest.mark.parametrize("name", sorted(SUBCOMMAND_OPTIONS))
def test_each_subcommand_help_describes_its_arguments(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for option in SUBCOMMAND_OPTIONS[name]:
        assert option in out


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom chronomoe.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("chronomoe")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("chronomoe ")


def test_no_subcommand_prints_usage_and_fails(capsys):
    code, _, err = run_cli(capsys)
    assert code == EXIT_ERROR and "usage: chronomoe" in err


# -- demo ------------------------------------------------------------------------------------
def test_demo_passes_its_options_to_run_demo(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("chronomoe.demo")
    fake.run_demo = lambda **options: calls.append(options) or 0
    monkeypatch.setitem(sys.modules, "chronomoe.demo", fake)

    assert run_cli(capsys, "demo", "--output-dir", "somewhere", "--steps", "30", "--seed", "4", "--quiet")[0] == 0
    assert run_cli(capsys, "demo", "--json")[0] == 0
    assert calls == [
        {"output_dir": "somewhere", "steps": 30, "seed": 4, "quiet": True, "as_json": False},
        {"output_dir": "runs", "seed": 0, "quiet": False, "as_json": True},
    ]


# -- summary ---------------------------------------------------------------------------------
def test_summary_of_a_collapsed_run_lists_each_layer_and_exits_1(capsys, make_run):
    code, out, _ = run_cli(capsys, "summary", make_run())
    assert code == EXIT_NO
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert sorted(rows) == ["0", "1", "2"]
    assert (
        "collapse_confirmed" in rows["2"]
        and "28 nominal->pre_collapse, 44 pre_collapse->collapse_confirmed" in rows["2"]
    )
    healthy = rows["0"].split()  # layer, Neff/n, Top2, dead, nearly dead, state, transitions
    assert healthy[1].endswith("/8") and healthy[3:] == ["0", "0", "nominal", "-"]
    assert out.rstrip().endswith("collapse_confirmed: layer 2")


def test_summary_of_a_healthy_run_exits_0(capsys, make_run):
    code, out, _ = run_cli(capsys, "summary", make_run(collapsing_layers=()))
    assert code == EXIT_OK and "no layer is collapse_confirmed" in out


def test_summary_of_infer_snapshots(capsys, make_run):
    code, out, _ = run_cli(capsys, "summary", make_run(infer=True), "--mode", "INFER")
    assert code == EXIT_NO and "12 INFER snapshots" in out


# -- replay ----------------------------------------------------------------------------------
def test_replay_with_the_recorded_rules_reports_no_change(capsys, make_run):
    code, out, _ = run_cli(capsys, "replay", make_run())
    assert code == EXIT_OK
    assert "alert states differ from the recording in 0 of 12 snapshots" in out
    assert "transitions: same as recorded (2)" in out


def test_replay_with_a_rules_file_prints_the_moved_transitions(capsys, make_run, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"pre_persistence": 1, "confirm_persistence": 2}))
    code, out, _ = run_cli(capsys, "replay", make_run(), "--rules", rules)
    assert code == EXIT_OK
    assert f"with rules from {rules}" in out
    assert "TRAIN layer 2: recorded 28 nominal->pre_collapse, 44 pre_collapse->collapse_confirmed" in out
    assert "replayed 20 nominal->pre_collapse" in out


def test_replay_out_writes_a_run_folder_that_summary_and_validate_read(capsys, make_run, tmp_path):
    out_dir = tmp_path / "replayed"
    code, out, _ = run_cli(capsys, "replay", make_run(), "--window", "8", "--out", out_dir)
    assert code == EXIT_OK and f"wrote {out_dir}" in out
    manifest = orjson.loads((out_dir / "run_manifest.json").read_bytes())
    assert manifest["replay"]["window"] == 8
    assert run_cli(capsys, "validate", out_dir)[0] == EXIT_OK
    code, out, _ = run_cli(capsys, "summary", out_dir)
    assert "6 TRAIN snapshots, steps 8..48" in out


def test_replay_of_a_large_log_on_a_terminal_shows_a_progress_bar(capsys, make_run, monkeypatch):
    import chronomoe.progress

    run_dir = make_run()
    monkeypatch.setattr(chronomoe.progress, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli(capsys, "replay", run_dir)
    assert code == EXIT_OK
    assert "routing_events.jsonl: 100%" in err and "144/144" in err


def test_replay_refuses_to_write_into_an_existing_run(capsys, make_run):
    run_dir = make_run()
    code, _, err = run_cli(capsys, "replay", run_dir, "--out", run_dir)
    assert code == EXIT_ERROR and "must differ from RUN_DIR" in err


# -- errors ----------------------------------------------------------------------------------
def _bad_rules(tmp_path, text: str) -> Path:
    path = tmp_path / "rules.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda run, tmp: ["summary", tmp / "absent"], "is not a folder"),
        (lambda run, tmp: ["replay", tmp / "absent"], "is not a folder"),
        (lambda run, tmp: ["report", tmp / "absent"], "is not a folder"),
        (lambda run, tmp: ["validate", tmp / "absent"], "is not a folder"),
        (lambda run, tmp: ["summary", tmp], "has no snapshots.jsonl"),
        (lambda run, tmp: ["replay", (tmp / "routing_events.jsonl").touch() or tmp], "holds no routing events"),
        (lambda run, tmp: ["replay", run, "--rules", _bad_rules(tmp, '{"neff_ratio": 3}')], "neff_ratio"),
        (lambda run, tmp: ["replay", run, "--rules", _bad_rules(tmp, "{not json")], "Invalid JSON"),
        (lambda run, tmp: ["replay", run, "--rules", _bad_rules(tmp, '{"typo": 1}')], "typo=1"),
        (lambda run, tmp: ["replay", run, "--rules", tmp / "absent.json"], "cannot be read"),
        (lambda run, tmp: ["replay", run, "--window", "0"], "--window: must be a positive integer, got '0'"),
        (lambda run, tmp: ["replay", run, "--window", "abc"], "--window: must be a positive integer, got 'abc'"),
        (lambda run, tmp: ["summary"], "required: RUN_DIR"),
        (lambda run, tmp: ["schema", "Foo"], "unknown record type 'Foo'"),
        (lambda run, tmp: ["replay", run, "--out", run / "snapshots.jsonl" / "x"], "--out="),
        (lambda run, tmp: ["report", run, "-o", run / "snapshots.jsonl" / "x"], "--output-dir="),
    ],
    ids=[
        "summary-missing",
        "replay-missing",
        "report-missing",
        "validate-missing",
        "no-snapshots",
        "no-events",
        "rules-out-of-range",
        "rules-not-json",
        "rules-unknown-key",
        "rules-missing",
        "window-zero",
        "window-not-a-number",
        "no-run-dir",
        "unknown-schema",
        "out-not-a-folder",
        "report-output-not-a-folder",
    ],
)
def test_errors_are_one_line_on_stderr_with_exit_2(capsys, make_run, tmp_path, argv, message):
    run_dir = make_run()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _out, err = run_cli(capsys, *argv(run_dir, empty))
    assert code == EXIT_ERROR
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err and err.startswith("chronomoe ")


# -- validate --------------------------------------------------------------------------------
def test_validate_accepts_a_recorded_run(capsys, make_run):
    code, out, _ = run_cli(capsys, "validate", make_run(infer=True))
    assert code == EXIT_OK
    assert "routing_events.jsonl: 288 records, ok" in out and out.rstrip().endswith("valid")


def test_validate_lists_invalid_lines_by_number_and_exits_1(capsys, make_run):
    run_dir = make_run()
    events_path = run_dir / "routing_events.jsonl"
    lines = events_path.read_bytes().splitlines(keepends=True)
    record = orjson.loads(lines[2])
    record["n_experts"] = 0
    lines[2] = orjson.dumps(record) + b"\n"
    lines[4] = b'{"step": \n'
    record = orjson.loads(lines[6])
    record["expert_token_counts"] = record["expert_token_counts"][:-1]
    lines[6] = orjson.dumps(record) + b"\n"
    events_path.write_bytes(b"".join(lines))

    code, out, _ = run_cli(capsys, "validate", run_dir)
    assert code == EXIT_NO
    assert "routing_events.jsonl:3: schema: $.n_experts" in out
    assert "routing_events.jsonl:5: not JSON" in out
    assert "routing_events.jsonl:7: model: " in out and "7 entries, n_experts=8" in out
    assert "invalid: 3 records" in out


def test_validate_reports_a_torn_last_line_without_failing(capsys, make_run):
    run_dir = make_run()
    with open(run_dir / "snapshots.jsonl", "ab") as handle:
        handle.write(b'{"step": 5')
    code, out, _ = run_cli(capsys, "validate", run_dir)
    assert code == EXIT_OK
    assert "snapshots.jsonl:13: torn last line" in out


def test_validate_checks_the_manifest_rules(capsys, make_run):
    run_dir = make_run()
    manifest = orjson.loads((run_dir / "run_manifest.json").read_bytes())
    manifest["rules"]["pre_top2"] = 2.0
    (run_dir / "run_manifest.json").write_bytes(orjson.dumps(manifest))
    code, out, _ = run_cli(capsys, "validate", run_dir)
    assert code == EXIT_NO and "run_manifest.json:1: rules: model: pre_top2" in out


# -- report and schema -----------------------------------------------------------------------
def test_report_prints_the_files_it_wrote(capsys, make_run, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, _ = run_cli(capsys, "report", make_run(), "-o", tmp_path / "report", "--layers", "2,0")
    written = [Path(line) for line in out.splitlines()]
    assert code == EXIT_OK
    assert [path.name for path in written] == ["overview.png", "experts.png", "loss.png", "report.html"]
    assert all(path.is_file() for path in written)


def test_report_of_two_runs_without_figures_writes_one_page_into_the_first_run(capsys, make_run):
    first, second = make_run("first"), make_run("second", collapsing_layers=())
    code, out, _ = run_cli(capsys, "report", first, second, "--no-figures")
    assert code == EXIT_OK and out.splitlines() == [str(first / "report-compare" / "report.html")]


def test_report_of_a_large_run_on_a_terminal_shows_a_progress_bar(capsys, make_run, monkeypatch):
    import chronomoe.progress

    monkeypatch.setattr(chronomoe.progress, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli(capsys, "report", make_run(), "--no-figures")
    assert code == EXIT_OK and "reading: 100%" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-columns", "3"], "must be an even integer >= 2"),
        (["--layers", "a,b"], "comma-separated layer ids"),
        (["--layers", "-1"], "comma-separated layer ids"),
    ],
)
def test_report_refuses_bad_options_in_one_line(capsys, make_run, argv, message):
    code, _, err = run_cli(capsys, "report", make_run(), *argv)
    assert code == EXIT_ERROR and message in err and len(err.strip().splitlines()) == 1


def test_schema_prints_the_committed_schema_of_one_record_type(capsys):
    code, out, _ = run_cli(capsys, "schema", "RoutingEvent")
    assert code == EXIT_OK and json.loads(out) == load_schema("RoutingEvent")


def test_schema_without_a_name_prints_all_keyed_by_type(capsys):
    code, out, _ = run_cli(capsys, "schema")
    assert code == EXIT_OK and sorted(json.loads(out)) == sorted(RECORD_MODELS)


def test_schema_of_an_unknown_type_names_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["schema", "Nope"])
    assert exit_info.value.code == EXIT_ERROR
    assert "choose from AlertRules" in capsys.readouterr().err

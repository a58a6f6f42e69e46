"""The report page in a real browser (headless Chromium): no error, every panel drawn, layer selection works.

Skipped when no Chromium is installed, unless ``CHRONOMOE_REQUIRE_BROWSER=1``
(``.ci/run`` sets it once it has installed Debian's chromium), which makes a
missing browser a failure. The screenshot of the checked page is kept in
``CHRONOMOE_ARTIFACTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chronomoe import Monitor
from chronomoe.controller import PressureController
from chronomoe.report import write_report
from chronomoe.report.browser import check_report_page, find_chromium

if find_chromium() is None:
    if os.environ.get("CHRONOMOE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("CHRONOMOE_REQUIRE_BROWSER=1 but no Chromium found (apt-get install chromium)")
    pytest.skip("no Chromium installed: the browser check of the report is skipped", allow_module_level=True)

BALANCED = [100] * 8
COLLAPSED = [700, 250, 20, 10, 10, 5, 5, 0]


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CHRONOMOE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def three_runs_page(tmp_path_factory) -> Path:
    """A report of three runs like the demo's arms: healthy, collapsing, collapsing under a PressureController."""
    output = tmp_path_factory.mktemp("runs")
    runs = []
    for run_id, controller in (("balanced", None), ("collapse", None), ("controlled", PressureController())):
        options = {} if controller is None else {"controller": controller}
        with Monitor(run_id, output_dir=output, lens=None, **options) as monitor:
            for position in range(30):
                collapsing = run_id != "balanced" and position >= 5
                window = [BALANCED, COLLAPSED if collapsing else BALANCED, BALANCED if position % 3 else COLLAPSED]
                monitor.observe(window, step=10 * (position + 1), train_loss=3.0 - 0.02 * position)
        runs.append(output / run_id)
    return write_report(runs, output / "report", figures=False)[-1]


def test_the_report_of_three_runs_draws_every_panel_without_an_error_and_follows_the_layer_selection(
    three_runs_page, tmp_path
):
    screenshot = artifacts(tmp_path) / "report-browser-check.png"
    check = check_report_page(three_runs_page, screenshot)
    assert check.errors == []
    assert check.empty_panels == []
    assert {"overview-states-2", "experts-2", "loss", "controller-bias-2", "layer-bias"} <= set(check.panels)
    assert check.layer_selection is None
    assert screenshot.stat().st_size > 50_000


def test_the_check_by_hand_passes_in_a_fresh_process_without_descriptors_above_2(three_runs_page, tmp_path):
    """``python -m chronomoe.report.browser PAGE --screenshot PNG`` in a process that closed every descriptor
    above 2 (the browser's pipes go to 3 and 4 in its process, whatever the parent holds there)."""
    screenshot = tmp_path / "page.png"
    code = (
        "import os, sys\n"
        "os.closerange(3, 64)\n"
        "from chronomoe.report.browser import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", code, str(three_runs_page), "--screenshot", str(screenshot)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "ok" and "layer selection: works" in result.stdout
    assert screenshot.stat().st_size > 50_000


def page_with(page: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = page.read_text()
    assert old in text
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(old, new, 1))
    return broken


def test_the_check_fails_on_a_page_that_logs_an_error(three_runs_page, tmp_path):
    broken = page_with(three_runs_page, tmp_path, "<main>", '<main><script>console.error("broken on purpose")</script>')
    check = check_report_page(broken)
    assert not check.ok and check.errors == ["console.error: broken on purpose"]


def test_the_check_fails_on_a_page_whose_script_throws(three_runs_page, tmp_path):
    broken = page_with(three_runs_page, tmp_path, '"use strict";', '"use strict"; null.boom;')
    check = check_report_page(broken)
    assert not check.ok and any("uncaught" in error and "boom" in error for error in check.errors)


def test_the_check_fails_on_a_page_with_an_empty_panel(three_runs_page, tmp_path):
    broken = page_with(three_runs_page, tmp_path, 'data-kind="overview" data-run="1"', 'data-kind="none" data-run="1"')
    check = check_report_page(broken)
    assert check.errors == [] and check.empty_panels == ["overview-states-1"] and not check.ok


def test_the_check_fails_when_choosing_a_layer_does_not_redraw_the_layer_panels(three_runs_page, tmp_path):
    broken = page_with(three_runs_page, tmp_path, "box.onchange = ", "box.onchange = () => {}; const ignored = ")
    check = check_report_page(broken)
    assert check.layer_selection is not None and "select box" in check.layer_selection and not check.ok

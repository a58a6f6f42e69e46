"""The visual report: where it writes, PNG figures that are real pictures, a self-contained readable page.

The page's drawing is checked in a real browser by ``tests/test_report_browser.py``.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import orjson
import pytest

from chronomoe.alerts import AlertRules, AlertState
from chronomoe.report import RunData, column_view, report_html, write_report
from chronomoe.report.palette import (
    MUTED_TEXT_COLOR,
    NO_DATA_COLOR,
    NO_DATA_TEXT_COLOR,
    STATE_COLORS,
    STATE_TEXT_COLORS,
    TEXT_COLOR,
    contrast_ratio,
)
from chronomoe.report.rundata import ControllerSeries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HTML_BUDGET_BYTES = 20 * 2**20


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report_files(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("matplotlib")
    from conftest import _write_collapsing_run

    run_dir = _write_collapsing_run(tmp_path_factory.mktemp("runs"), n_layers=4, collapsing_layers=(1, 2))
    return {path.name: path for path in write_report(run_dir)}


class _PageParser(HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.external: list[str] = []
        self.panels: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("href", "src"):
            value = attributes.get(name) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if "data-panel" in attributes:
            self.panels.append(attributes["data-panel"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_one_run_is_reported_into_its_run_folder_with_four_figures_and_the_page(report_files):
    assert sorted(report_files) == ["experts.png", "loss.png", "overview.png", "report.html"]
    assert {path.parent.name for path in report_files.values()} == {"report"}


@pytest.mark.parametrize("name", ["overview.png", "experts.png", "loss.png"])
def test_each_figure_is_a_non_trivial_png(report_files, name):
    data = report_files[name].read_bytes()
    width, height = png_size(data)
    assert width >= 900 and height >= 300
    assert len(data) > 20_000  # a blank canvas of that size compresses to a few kB


def test_the_page_is_well_formed_and_loads_nothing_from_outside(report_files):
    text = report_files["report.html"].read_text()
    parser = _PageParser()
    parser.feed(text)
    assert parser.open == []
    assert parser.external == []
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text)
    assert "@import" not in text and "url(http" not in text


def test_the_page_declares_a_panel_for_every_metric_the_layer_and_the_loss(report_files):
    parser = _PageParser()
    parser.feed(report_files["report.html"].read_text())
    expected = {f"overview-{metric}-0" for metric in ("states", "diversity", "top2", "maxVio")}
    assert expected | {"experts-0", "layer-diversity", "layer-top2", "loss"} <= set(parser.panels)


def test_the_page_lists_every_transition(report_files):
    text = report_files["report.html"].read_text()
    table = re.search(r"alert transitions \(4\)</summary>\s*<table>(.*?)</table>", text, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        ("28", "2", "pre_collapse"),
        ("32", "1", "pre_collapse"),
        ("44", "1", "collapse_confirmed"),
        ("44", "2", "collapse_confirmed"),
    ]


def test_several_runs_are_reported_into_the_first_runs_folder_with_their_differences(tmp_path):
    pytest.importorskip("matplotlib")
    from conftest import _write_collapsing_run

    healthy = _write_collapsing_run(tmp_path, "healthy", collapsing_layers=())
    collapsed = _write_collapsing_run(tmp_path, "collapsed", collapsing_layers=(1,))
    written = write_report([healthy, collapsed])
    assert {path.parent for path in written} == {healthy / "report-compare"}
    assert {"overview-healthy.png", "overview-collapsed.png", "loss.png"} <= {path.name for path in written}
    text = written[-1].read_text()
    assert "Differences" in text and "1 (first at step 44) (+1)" in text


def test_every_state_colour_and_the_page_text_have_a_contrast_of_at_least_4_5():
    for state in AlertState:
        assert contrast_ratio(STATE_TEXT_COLORS[state], STATE_COLORS[state]) >= 4.5, state
    assert contrast_ratio(NO_DATA_TEXT_COLOR, NO_DATA_COLOR) >= 4.5
    for background in ("#ffffff", "#f6f7f9", "#eef0f3"):  # cards, the page, table headings
        assert contrast_ratio(TEXT_COLOR, background) >= 4.5
        assert contrast_ratio(MUTED_TEXT_COLOR, background) >= 4.5


def test_the_page_css_uses_only_text_colours_that_pass_on_white():
    css = (Path(__file__).parents[1] / "chronomoe/report/assets/report.css").read_text()
    for color in re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", css):
        assert contrast_ratio(color, "#ffffff") >= 4.5 or color.lower() == "#ffffff", color


def synthetic_run(n_snapshots: int, n_layers: int = 58, n_experts: int = 256, max_columns: int = 512) -> RunData:
    """A RunData as load_run makes it, built in memory: per-snapshot metrics, expert tokens in columns."""
    rng = np.random.default_rng(0)
    width = 1
    while -(-n_snapshots // width) > max_columns:
        width *= 2
    columns = -(-n_snapshots // width)
    shape = (n_snapshots, n_layers)
    return RunData(
        run_dir=Path("synthetic"),
        run_id="synthetic",
        model_name="synthetic",
        mode="TRAIN",
        steps=np.arange(1, n_snapshots + 1, dtype=np.int64) * 10,
        train_loss=rng.normal(3, 0.1, n_snapshots),
        val_loss=np.full(n_snapshots, np.nan),
        layer_ids=np.arange(n_layers, dtype=np.int64),
        n_experts=np.full(n_layers, n_experts, dtype=np.int64),
        n_effective=rng.uniform(1, n_experts, shape),
        top2_share=rng.uniform(0, 1, shape),
        max_vio=rng.uniform(0, n_experts - 1, shape),
        dead_experts=rng.integers(0, n_experts, shape),
        states=rng.integers(-1, 3, shape).astype(np.int8),
        column_width=width,
        expert_tokens=rng.integers(0, 5000, (columns, n_layers, n_experts)),
        transitions=[],
        rules=AlertRules.default(),
        controller=ControllerSeries(
            controllers=("pressure",),
            decisions=n_snapshots * n_layers,
            action_totals={"adjust": n_snapshots * n_layers},
            applied=n_snapshots * n_layers,
            dry_run=False,
            pressure=rng.uniform(0, 1, shape),
            bias=rng.uniform(0, 4, shape),
            actions={"adjust": np.full(n_snapshots, n_layers)},
        ),
    )


def test_the_page_of_three_58_by_256_runs_of_10000_snapshots_stays_within_20_mb():
    runs = [synthetic_run(10_000)] * 3
    page = report_html(runs, [column_view(run) for run in runs], ["a", "b", "c"])
    assert len(page.encode()) <= HTML_BUDGET_BYTES


def test_a_downsampled_run_says_so_on_its_page():
    run = synthetic_run(2_000, n_layers=4, n_experts=8)
    page = report_html([run], [column_view(run)], ["synthetic"])
    assert "2,000 snapshots drawn in 500 columns of 4 snapshots" in page


def test_the_page_data_is_valid_json_that_cannot_end_its_script_element():
    run = synthetic_run(20, n_layers=2, n_experts=4)
    run = RunData(**{**run.__dict__, "run_id": "</script><script>alert(1)</script>"})
    page = report_html([run], [column_view(run)], ["</script>"])
    data = re.search(r'<script type="application/json" id="chronomoe-data">(.*?)</script>', page, re.S).group(1)
    assert orjson.loads(data)["runs"][0]["label"] == "</script>"


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, chronomoe.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

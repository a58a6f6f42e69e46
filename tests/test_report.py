"""The visual report: PNG figures that are real pictures, and a self-contained HTML page."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from chronomoe.report import heatmap_steps, summarize_run, write_report

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report_files(tmp_path_factory) -> dict[str, Path]:
    from conftest import _write_collapsing_run

    run_dir = _write_collapsing_run(tmp_path_factory.mktemp("runs"), n_layers=4, collapsing_layers=(1, 2))
    return {path.name: path for path in write_report(run_dir)}


def test_report_writes_four_figures_and_the_page_into_run_dir_report(report_files):
    assert sorted(report_files) == ["neff.png", "report.html", "shares.png", "states.png", "top2.png"]
    assert {path.parent.name for path in report_files.values()} == {"report"}


@pytest.mark.parametrize("name", ["neff.png", "top2.png", "shares.png", "states.png"])
def test_each_figure_is_a_non_trivial_png(report_files, name):
    data = report_files[name].read_bytes()
    width, height = png_size(data)
    assert width >= 600 and height >= 250
    assert len(data) > 10_000  # a blank canvas of that size compresses to a few kB


class _PageParser(HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"])
        for name in ("href", "src"):
            value = attributes.get(name) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data):
        if self.open and self.open[-1] == "td":
            self.cells.append(data)


def test_html_page_is_well_formed_and_self_contained(report_files):
    parser = _PageParser()
    parser.feed(report_files["report.html"].read_text())
    assert parser.open == []
    assert parser.external == []
    assert len(parser.images) == 4
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        png_size(base64.b64decode(source.split(",", 1)[1]))


def test_html_page_holds_the_transitions_table(report_files):
    text = report_files["report.html"].read_text()
    transitions = re.search(r"<h2>Alert transitions</h2>\s*<table>(.*?)</table>", text, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", transitions, re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert [(row[0], row[1], row[3]) for row in cells] == [
        ("28", "2", "pre_collapse"),
        ("32", "1", "pre_collapse"),
        ("44", "1", "collapse_confirmed"),
        ("44", "2", "collapse_confirmed"),
    ]


def test_heatmap_steps_pick_the_snapshot_at_or_after_each_chosen_step():
    steps = np.array([4, 8, 12, 16])
    assert heatmap_steps(steps, [1, 8, 9, 100]) == [4, 8, 12, 16]
    assert heatmap_steps(steps, None) == [4, 8, 12, 16]
    assert heatmap_steps(np.arange(10, 110, 10), None) == [10, 40, 70, 100]


def test_summary_keeps_the_last_metrics_of_a_layer_that_has_no_data_at_the_end(tmp_path):
    from chronomoe import Monitor

    with Monitor("gap", output_dir=tmp_path, lens=None) as monitor:
        monitor.observe([[10, 30], [5, 5]], step=1)
        monitor.observe([[0, 0], [5, 5]], step=2)
    layer = summarize_run(tmp_path / "gap").layers[0]
    assert (layer.last_step, layer.last.top2_share) == (1, 1.0)


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, chronomoe.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no headless browser at /usr/bin/chromium")
def test_html_page_renders_in_headless_chromium(report_files, tmp_path):
    screenshot = tmp_path / "page.png"
    subprocess.run(
        [
            "/usr/bin/chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={screenshot}",
            "--window-size=1200,3000",
            report_files["report.html"].as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    dom = subprocess.run(
        [
            "/usr/bin/chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            report_files["report.html"].as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert png_size(screenshot.read_bytes()) == (1200, 3000)
    assert dom.count("data:image/png;base64,") == 4 and "Alert transitions" in dom

"""``chronomoe report``: a run's figures and HTML page, written into one folder.

:func:`write_report` reads ``snapshots.jsonl`` three times, streaming:
for the summary (:mod:`~chronomoe.report.summary`), for the per-layer series
and for the heatmaps' share matrices (:mod:`~chronomoe.report.series`);
then it draws the figures (:mod:`~chronomoe.report.plots`) and writes the
page that embeds them (:mod:`~chronomoe.report.page`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from ..alerts import AlertRules
from ..errors import InvalidInputError
from ..replay import recorded_rules
from .page import report_html
from .plots import plot_neff, plot_shares, plot_states, plot_top2
from .series import collect_series, heatmap_steps, shares_at
from .summary import summarize_run


def write_report(
    run_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    mode: str = "TRAIN",
    steps: Sequence[int] | None = None,
) -> list[Path]:
    """Write the figures and ``report.html`` into ``output_dir`` (default ``RUN_DIR/report``).

    Figures: ``neff.png``, ``top2.png``, ``shares.png`` (heatmaps at the
    snapshots at or after ``steps``; default evenly spaced), ``states.png``.
    Returns the written paths, the HTML page last. Needs matplotlib
    (``pip install 'chronomoe[report]'``).
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError("report", "matplotlib", "is not installed: pip install 'chronomoe[report]'")
    summary = summarize_run(run_dir, mode)
    run_dir = summary.run_dir
    output = Path(output_dir) if output_dir is not None else run_dir / "report"
    output.mkdir(parents=True, exist_ok=True)
    rules = recorded_rules(run_dir) or AlertRules.default()
    series = collect_series(run_dir, mode)
    figures = [
        plot_neff(series, rules, output / "neff.png"),
        plot_top2(series, rules, output / "top2.png"),
        plot_shares(shares_at(run_dir, mode, heatmap_steps(series.steps, steps)), output / "shares.png"),
        plot_states(series, output / "states.png"),
    ]
    page = output / "report.html"
    page.write_text(report_html(summary, rules, figures, run_dir))
    return [*figures, page]

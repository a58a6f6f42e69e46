"""Reading a recorded run: the per-layer summary table and the visual report.

* :mod:`~chronomoe.report.summary`: :func:`summarize_run` reduces
  ``snapshots.jsonl`` to each layer's last metrics, state and transitions;
  :func:`format_summary` is the text ``chronomoe summary`` prints.
* :mod:`~chronomoe.report.series`: the per-layer time series and share
  matrices the figures plot.
* :mod:`~chronomoe.report.plots`: the matplotlib figures (the optional extra
  ``chronomoe[report]``, imported only when a figure is drawn).
* :mod:`~chronomoe.report.page`: the self-contained HTML page.
* :mod:`~chronomoe.report.palette`: the alert states' colours, shared by both.
* :mod:`~chronomoe.report.write`: :func:`write_report`, the figures and the
  page into one folder (``chronomoe report``).
"""

from __future__ import annotations

from .page import report_html
from .series import LayerSeries, RunSeries, collect_series, heatmap_steps, shares_at
from .summary import LayerSummary, RunSummary, format_summary, summarize_run, summary_rows, summary_warnings
from .write import write_report

__all__ = [
    "LayerSeries",
    "LayerSummary",
    "RunSeries",
    "RunSummary",
    "collect_series",
    "format_summary",
    "heatmap_steps",
    "report_html",
    "shares_at",
    "summarize_run",
    "summary_rows",
    "summary_warnings",
    "write_report",
]

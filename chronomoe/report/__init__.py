"""Reading a recorded run: the per-layer summary table, the visual report of one or several runs.

* :mod:`~chronomoe.report.summary`: :func:`summarize_run` reduces
  ``snapshots.jsonl`` to each layer's last metrics, state and transitions;
  :func:`format_summary` is the text ``chronomoe summary`` prints.
* :mod:`~chronomoe.report.load`: :func:`load_run`, a run folder as
  :class:`RunData` (per-snapshot arrays), in one streaming pass; the one
  place where the report reads storage (:mod:`~chronomoe.report.rows` and
  :mod:`~chronomoe.report.decision_rows` parse the lines).
* :mod:`~chronomoe.report.columns` and :mod:`~chronomoe.report.rundata`:
  a run in at most ``max_columns`` time columns (:func:`column_view`), what
  the figures draw.
* :mod:`~chronomoe.report.compare`: each run's facts and the comparison table of several.
* :mod:`~chronomoe.report.plots`: the PNG figures (matplotlib, the optional
  extra ``chronomoe[report]``, imported only when a figure is drawn).
* :mod:`~chronomoe.report.payload` and :mod:`~chronomoe.report.page`: the
  self-contained interactive HTML page (its script and style in ``assets/``).
* :mod:`~chronomoe.report.palette`: colour-blind-safe colours and the WCAG contrast check.
* :mod:`~chronomoe.report.browser`: opens a page in headless Chromium and checks what it drew.
* :mod:`~chronomoe.report.write`: :func:`write_report`, ``chronomoe report``.
"""

from __future__ import annotations

from .load import load_run
from .page import report_html
from .rundata import ControllerSeries, RunColumns, RunData, column_view
from .summary import LayerSummary, RunSummary, format_summary, summarize_run, summary_rows, summary_warnings
from .write import write_report

__all__ = [
    "ControllerSeries",
    "LayerSummary",
    "RunColumns",
    "RunData",
    "RunSummary",
    "column_view",
    "format_summary",
    "load_run",
    "report_html",
    "summarize_run",
    "summary_rows",
    "summary_warnings",
    "write_report",
]

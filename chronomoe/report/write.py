"""``chronomoe report``: one or several runs into one folder: ``report.html`` and PNG figures for papers.

:func:`write_report` loads each run (:func:`~chronomoe.report.load.load_run`,
one streaming pass over its files), reduces it to columns
(:func:`~chronomoe.report.rundata.column_view`), draws the PNGs
(:mod:`~chronomoe.report.plots`, needs matplotlib) and writes the page
(:mod:`~chronomoe.report.page`, needs nothing but the standard library and numpy).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import InvalidInputError
from ..replay import require_run_dir
from .columns import DEFAULT_MAX_COLUMNS
from .load import load_run
from .page import report_html
from .rundata import RunColumns, RunData, column_view

COMPARISON_FOLDER = "report-compare"
"""Default output folder of a report of several runs, inside the first run's folder."""


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Display names of runs: their folder names, numbered when two are the same."""
    names = [path.resolve().name or str(path) for path in run_dirs]
    return [name if names.count(name) == 1 else f"{name} ({position + 1})" for position, name in enumerate(names)]


def default_output_dir(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/report`` for one run, ``FIRST_RUN_DIR/report-compare`` for several: never the working folder."""
    return run_dirs[0] / ("report" if len(run_dirs) == 1 else COMPARISON_FOLDER)


def write_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str] | None = None,
    mode: str = "TRAIN",
    *,
    layers: Sequence[int] | None = None,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    figures: bool = True,
    progress: Callable[[int], None] | None = None,
    on_run: Callable[[RunData], None] | None = None,
) -> list[Path]:
    """Write ``report.html`` (and, with ``figures``, the PNGs) of one or several runs; return the paths written,
    the page last.

    Args:
        run_dirs: a run folder, or several: their steps are aligned and their differences tabulated.
        output_dir: default :func:`default_output_dir`.
        mode: which snapshots (``TRAIN`` or ``INFER``).
        layers: the layers of the expert figure (default: the worst few, see
            :func:`~chronomoe.report.plots.worst_layers`).
        max_columns: most heatmap columns (an even integer >= 2); longer runs are drawn in columns of
            several snapshots, as the page says.
        figures: draw the PNGs (needs matplotlib: ``pip install 'chronomoe[report]'``).
        progress: called with the bytes read from the run folders as they are read.
        on_run: called with each run once read (the command prints its :attr:`RunData.warnings`).
    """
    sources = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not sources:
        raise InvalidInputError("run_dirs", run_dirs, "must name at least one run folder")
    paths = [require_run_dir(source) for source in sources]
    if figures and importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError("report", "matplotlib", "is not installed: pip install 'chronomoe[report]'")
    runs = [load_run(path, mode, max_columns=max_columns, progress=progress) for path in paths]
    for run in runs:
        if on_run is not None:
            on_run(run)
    output = Path(output_dir) if output_dir is not None else default_output_dir(paths)
    output.mkdir(parents=True, exist_ok=True)
    labels = run_labels(paths)
    views = [column_view(run) for run in runs]
    written = draw_figures(runs, views, labels, output, layers) if figures else []
    page = output / "report.html"
    page.write_text(report_html(runs, views, labels), encoding="utf-8")
    return [*written, page]


def draw_figures(
    runs: Sequence[RunData],
    views: Sequence[RunColumns],
    labels: Sequence[str],
    output: Path,
    layers: Sequence[int] | None,
) -> list[Path]:
    """The PNGs: per run ``overview``, ``experts`` and ``controller`` (with decisions to draw), then ``loss``
    (all runs on one step axis); files of several runs carry the run's label."""
    from .plots import plot_controller, plot_experts, plot_loss, plot_overview, worst_layers

    written = []
    for run, view, label in zip(runs, views, labels, strict=True):
        suffix = "" if len(runs) == 1 else f"-{_file_label(label)}"
        written.append(plot_overview(run, view, output / f"overview{suffix}.png"))
        chosen = list(layers) if layers else worst_layers(run)
        written.append(plot_experts(run, chosen, output / f"experts{suffix}.png"))
        if run.controller is not None and run.controller.acted:
            written.append(plot_controller(run, view, output / f"controller{suffix}.png"))
    written.append(plot_loss(runs, views, labels, output / "loss.png"))
    return written


def _file_label(label: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in label)

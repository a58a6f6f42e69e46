"""``chronomoe report`` at DeepSeek-V3 size: 58 MoE layers x 256 experts.

Measures, in one process (seconds, medians of ``--repeats``):

* **render**: a run of ``--render-snapshots`` (10,000) snapshots, held in
  memory as :func:`chronomoe.report.load_run` leaves it, turned into the
  report: ``render_seconds`` (column view, ``report.html`` and the four PNG
  figures; target < 10 s), of which ``page_seconds`` and ``figures_seconds``,
  and ``html_bytes`` (target <= 20 MB). Its rows are made by
  ``synthetic_run.SyntheticRouting`` (multinomial counts, about one layer in
  five collapsing), their metrics by :func:`chronomoe.metrics.layer_metrics_batch`
  and their states by an :class:`~chronomoe.alerts.AlertBank` with the default
  rules; ``assemble_seconds`` is the time :class:`~chronomoe.report.load.RunBuilder`
  takes to accumulate them (not part of render);
* **load**: a run folder of ``--load-snapshots`` (2,000) snapshots written by
  ``synthetic_run.write_synthetic_run`` through ``Monitor.observe`` with a
  PressureController (kept in ``--run-dir`` and reused; writing it is not
  timed): ``load_seconds`` (:func:`~chronomoe.report.load_run`, snapshots and
  decisions), ``report_seconds`` (:func:`~chronomoe.report.write_report` end to
  end, what ``chronomoe report`` does) and, per snapshot, the loader against
  the previous report's reader (every line validated as a ``SystemSnapshot``,
  read on the first ``--reference-snapshots`` snapshots of the same file).

The JSON gives the machine's load average before and after: the development
VM is shared, and timings scale with its load.

Run: ``.venv/bin/python benchmarks/bench_report.py [--run-dir DIR]``; prints JSON.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit
from synthetic_run import SyntheticRouting, SyntheticRun, imbalance_of, write_synthetic_run

from chronomoe.alerts import AlertBank, AlertRules
from chronomoe.metrics import layer_metrics_batch
from chronomoe.replay import iter_snapshots
from chronomoe.report import column_view, load_run, report_html, write_report
from chronomoe.report.load import RunBuilder
from chronomoe.report.rows import NO_DATA, STATE_CODES, SnapshotRow
from chronomoe.report.write import draw_figures


def synthetic_rows(shape: SyntheticRun) -> list[SnapshotRow]:
    """The rows of a synthetic run as the report's loader would read them (no controller)."""
    routing, rules, bank = SyntheticRouting(shape), AlertRules.default(), AlertBank(AlertRules.default())
    layer_ids = np.arange(shape.n_layers, dtype=np.int64)
    n_experts = np.full(shape.n_layers, shape.n_experts, dtype=np.int64)
    rows, imbalance = [], 0.0
    for position in range(shape.snapshots):
        counts = routing.counts(position)
        metrics = layer_metrics_batch(counts, n_experts)
        bank.step(
            layer_ids.tolist(),
            rules.pre_condition(metrics.n_effective, n_experts, metrics.top2_share).tolist(),
            rules.collapse_condition(metrics.dead_count, metrics.top2_share).tolist(),
            metrics.no_data.tolist(),
        )
        states = [NO_DATA if empty else STATE_CODES[bank[i].state] for i, empty in enumerate(metrics.no_data)]
        train_loss, val_loss = routing.losses(position, imbalance)
        imbalance = imbalance_of(metrics.expert_diversity)
        rows.append(
            SnapshotRow(
                step=routing.step_of(position),
                mode="TRAIN",
                run_id="synthetic",
                model_name="synthetic-58x256",
                train_loss=train_loss,
                val_loss=np.nan if val_loss is None else val_loss,
                layer_ids=layer_ids,
                n_experts=n_experts,
                n_effective=metrics.n_effective,
                top2_share=metrics.top2_share,
                max_vio=metrics.max_vio,
                dead_experts=metrics.dead_count,
                states=np.array(states, dtype=np.int8),
                counts=counts,
                transitions=(),
                dropped_records=0,
            )
        )
    return rows


def measure_render(snapshots: int, repeats: int) -> dict[str, object]:
    rows = synthetic_rows(SyntheticRun(snapshots=snapshots))
    start = time.perf_counter()
    builder = RunBuilder()
    for row in rows:
        builder.add(row)
    run = builder.finish(Path("synthetic"), "TRAIN", AlertRules.default(), {})
    assemble = time.perf_counter() - start
    del rows
    page_times, figure_times, sizes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            start = time.perf_counter()
            view = column_view(run)
            page = report_html([run], [view], ["synthetic"]).encode()
            (Path(folder) / "report.html").write_bytes(page)
            page_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            draw_figures([run], [view], ["synthetic"], Path(folder), None)
            figure_times.append(time.perf_counter() - start)
            sizes.append(len(page))
    renders = [page + figures for page, figures in zip(page_times, figure_times, strict=True)]
    return {
        "layers": int(run.layer_ids.size),
        "experts": int(run.n_experts.max()),
        "snapshots": run.n_snapshots,
        "columns": int(-(-run.n_snapshots // run.column_width)),
        "snapshots_per_column": run.column_width,
        "assemble_seconds": round(assemble, 2),
        "render_seconds": round(statistics.median(renders), 2),
        "page_seconds": round(statistics.median(page_times), 2),
        "figures_seconds": round(statistics.median(figure_times), 2),
        "html_bytes": sizes[0],
        "targets": {"render_seconds": 10, "html_bytes": 20 * 2**20},
    }


def measure_load(run_dir: Path, snapshots: int, reference_snapshots: int) -> dict[str, object]:
    if not (run_dir / "snapshots.jsonl").is_file():
        print(f"writing {run_dir} ({snapshots} snapshots; not timed)...", file=sys.stderr, flush=True)
        write_synthetic_run(run_dir.parent, run_dir.name, SyntheticRun(snapshots=snapshots))
    start = time.perf_counter()
    run = load_run(run_dir)
    load = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_report(run_dir, folder)
        report = time.perf_counter() - start
    start = time.perf_counter()
    reference = sum(1 for _ in itertools.islice(iter_snapshots(run_dir, "TRAIN"), reference_snapshots))
    reference_seconds = time.perf_counter() - start
    files = {name: (run_dir / name).stat().st_size for name in ("snapshots.jsonl", "decisions.jsonl")}
    per_snapshot = load / run.n_snapshots
    return {
        "run_dir": str(run_dir),
        "snapshots": run.n_snapshots,
        "file_bytes": files,
        "load_seconds": round(load, 2),
        "report_seconds": round(report, 2),
        "load_ms_per_snapshot": round(1000 * per_snapshot, 2),
        "reference_ms_per_snapshot": round(1000 * reference_seconds / reference, 2),
        "time_ratio_to_reference": round(per_snapshot / (reference_seconds / reference), 3),
        "reference": f"SystemSnapshot validation of every line (iter_snapshots), first {reference} snapshots",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-snapshots", type=int, default=10_000)
    parser.add_argument("--load-snapshots", type=int, default=2_000)
    parser.add_argument("--reference-snapshots", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-dir", type=Path, help="the generated run folder (default: a temporary one)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    render = measure_render(args.render_snapshots, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = args.run_dir or Path(folder) / "synthetic-58x256"
        load = measure_load(run_dir, args.load_snapshots, args.reference_snapshots)
    emit({"render": render, "load": load, "load_average_before_after": [load_before[0], os.getloadavg()[0]]})


if __name__ == "__main__":
    main()

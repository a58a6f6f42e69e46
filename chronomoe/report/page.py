"""The report's HTML page: one self-contained file (figures inlined as base64 PNG, no external resource).

Sections, in order: run facts (from the summary and ``run_manifest.json``),
the verdict, the per-layer table of :func:`~chronomoe.report.summary.summary_rows`,
the figures with their captions, the table of every alert transition. State
cells are coloured by :data:`~chronomoe.report.palette.STATE_COLORS`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from ..alerts import AlertRules
from ..io import MANIFEST_FILE, load_manifest
from .palette import STATE_COLORS
from .summary import RunSummary, summary_rows

FIGURE_CAPTIONS = {  # in the page's order
    "states.png": "Alert state of each layer per snapshot window.",
    "neff.png": "Effective number of experts per layer; shaded windows are in an alert state, "
    "the dashed line is the PRE_COLLAPSE threshold.",
    "top2.png": "Share of the two busiest experts per layer, with the alert thresholds.",
    "shares.png": "Share of each expert's tokens per layer at chosen snapshots (grey: no data or no such expert).",
}


def report_html(summary: RunSummary, rules: AlertRules, figures: Sequence[Path], run_dir: Path) -> str:
    """A self-contained HTML page: run facts, summary table, figures (base64 PNG), transitions table."""
    escape = html.escape
    manifest = load_manifest(run_dir) if (run_dir / MANIFEST_FILE).is_file() else {}
    facts = [
        ("run", summary.run_id),
        ("model", summary.model_name or "-"),
        ("mode", summary.mode),
        ("snapshots", f"{summary.snapshots} (steps {summary.first_step}..{summary.last_step})"),
        ("git commit", manifest.get("git_commit", "-")),
        ("chronomoe", manifest.get("chronomoe_version", "-")),
        ("rules", ", ".join(f"{name}={value}" for name, value in rules.model_dump().items())),
    ]
    rows = summary_rows(summary)
    summary_table = _table(rows[0], rows[1:], state_column=5)
    transition_rows = [
        [
            str(t.step),
            str(t.layer_id),
            t.source.value,
            t.dest.value,
            t.trigger,
            _number(t.metrics.get("n_effective"), 2),
            _number(t.metrics.get("top2_share"), 3),
            str(t.metrics.get("dead_expert_count", "-")),
        ]
        for t in summary.transitions
    ]
    transitions_table = (
        _table(["step", "layer", "from", "to", "trigger", "Neff", "Top2", "dead"], transition_rows, state_column=3)
        if transition_rows
        else "<p>No transitions: every layer stayed nominal.</p>"
    )
    images = "\n".join(
        f'<figure><img alt="{escape(path.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{escape(FIGURE_CAPTIONS[path.name])}'
        "</figcaption></figure>"
        for path in sorted(figures, key=lambda p: list(FIGURE_CAPTIONS).index(p.name))
    )
    collapsed = summary.collapsed_layers
    verdict = (
        f'<p class="verdict bad">collapse_confirmed: layer{"s" if len(collapsed) > 1 else ""} '
        f"{escape(', '.join(map(str, collapsed)))}</p>"
        if collapsed
        else '<p class="verdict ok">No layer is collapse_confirmed.</p>'
    )
    state_styles = "\n".join(
        f"td.state-{state.value} {{ background: {color}; }}" for state, color in STATE_COLORS.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ChronoMoE report: {escape(summary.run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }}
dt {{ font-weight: 600; }}
figure {{ margin: 1rem 0 2rem; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.verdict {{ font-weight: 600; padding: 0.4rem 0.8rem; display: inline-block; }}
.verdict.bad {{ background: #f4cccc; }}
.verdict.ok {{ background: #d9ead3; }}
{state_styles}
</style>
</head>
<body>
<h1>ChronoMoE report: {escape(summary.run_id)}</h1>
<dl>
{"".join(f"<dt>{escape(name)}</dt><dd>{escape(str(value))}</dd>" for name, value in facts)}
</dl>
{verdict}
<h2>Layers at the end of the run</h2>
{summary_table}
<h2>Figures</h2>
{images}
<h2>Alert transitions</h2>
{transitions_table}
</body>
</html>
"""


def _number(value: float | int | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], state_column: int) -> str:
    """An HTML table; cells of ``state_column`` get the class ``state-<value>`` (coloured by state)."""
    escape = html.escape
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="state-{escape(cell)}">{escape(cell)}</td>'
            if column == state_column
            else f"<td>{escape(cell)}</td>"
            for column, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"

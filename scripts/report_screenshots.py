"""The report pictures of README and docs/: three demo arms and a generated 58 x 256 run, reported and screenshot.

Run: ``.venv/bin/python scripts/report_screenshots.py [--runs DIR] [--snapshots N] [--reuse]``

1. trains the demo's three arms as ``chronomoe demo`` does (``chronomoe.demo``:
   400 steps, seed 0): ``demo-balanced``, ``demo-collapse`` and ``demo-controlled``
   (the collapsing arm with a PressureController on the router bias);
2. writes a synthetic DeepSeek-V3-sized run (58 layers x 256 experts, ``--snapshots``
   snapshots, a PressureController; ``benchmarks/synthetic_run.py``);
3. runs ``chronomoe report`` on the three arms together and on the synthetic run;
4. opens both pages in headless Chromium (``chronomoe.report.browser``), fails
   unless every panel is drawn without error and the layer selection works, and
   writes crops of the screenshots and some PNG figures into ``docs/figures/``.

With ``--reuse``, run folders that already hold snapshots are not trained or
written again. Took 25 minutes on the shared 2-core development VM (most of it
training the three arms); with ``--reuse`` and every run folder there, 1.5 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_run import SyntheticRun, write_synthetic_run  # noqa: E402

from chronomoe.demo import ARMS, DEFAULT_STEPS, DemoConfig, make_corpus, train_arm  # noqa: E402
from chronomoe.report import write_report  # noqa: E402
from chronomoe.report.browser import check_report_page  # noqa: E402

FIGURES = ROOT / "docs" / "figures"


def has_run(run_dir: Path) -> bool:
    return (run_dir / "snapshots.jsonl").is_file()


def screenshots(page: Path, name: str, sections: list[str]) -> None:
    """Check ``page`` in Chromium and write crops of its sections as ``docs/figures/report-NAME-SECTION.png``."""
    full = page.with_name("screenshot.png")
    check = check_report_page(page, full)
    if not check.ok:
        raise SystemExit(f"{page}: {check.errors or check.empty_panels or check.layer_selection}")
    image = Image.open(full)
    for section in sections:
        top, height = check.sections[section]
        crop = image.crop((0, max(0, top - 8), image.width, min(image.height, top + height + 8)))
        crop.save(FIGURES / f"report-{name}-{section}.png", optimize=True)
        print(FIGURES / f"report-{name}-{section}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="parent of the run folders (default: runs)")
    parser.add_argument("--snapshots", type=int, default=2000, help="snapshots of the 58 x 256 run (default: 2000)")
    parser.add_argument("--reuse", action="store_true", help="keep run folders that already hold snapshots")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    config = DemoConfig()
    corpus = make_corpus(config, 0)
    arms = [args.runs / arm.run_id for arm in ARMS]
    for arm, run_dir in zip(ARMS, arms, strict=True):
        if not (args.reuse and has_run(run_dir)):
            train_arm(arm, config, corpus, DEFAULT_STEPS, 0, args.runs)
    synthetic = args.runs / "synthetic-58x256"
    if not (args.reuse and has_run(synthetic)):
        shutil.rmtree(synthetic, ignore_errors=True)
        write_synthetic_run(args.runs, synthetic.name, SyntheticRun(snapshots=args.snapshots))

    demo_files = write_report(arms)
    synthetic_files = write_report(synthetic)
    for path in demo_files + synthetic_files:
        print(path)
    screenshots(demo_files[-1], "demo", ["runs", "overview", "layer", "loss", "controller"])
    screenshots(synthetic_files[-1], "58x256", ["overview", "layer", "loss", "controller"])
    for source, target in (
        (demo_files[-1].with_name("loss.png"), "demo-loss.png"),
        (synthetic_files[-1].with_name("overview.png"), "58x256-overview.png"),
        (synthetic_files[-1].with_name("experts.png"), "58x256-experts.png"),
    ):
        shutil.copyfile(source, FIGURES / target)
        print(FIGURES / target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""README's output blocks and figures are what the commands and examples above them print and draw today.

``tests/readme_blocks.py`` says how README marks them and rewrites them
(``.venv/bin/python tests/readme_blocks.py --write``); this test runs every
marked command and example in a fresh folder, in README's order (the demo
included: a few minutes on the 2-core development VM), and fails with a diff
when README's copy no longer matches.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from readme_blocks import README, differences, marked_blocks


def test_readme_marks_its_outputs_and_figures():
    kinds = [block.kind for block in marked_blocks(README.read_text().splitlines())]
    assert kinds.count("output") >= 6 and kinds.count("figure") == 2 and kinds.count("file") == 1


@pytest.mark.slow
def test_every_output_block_and_figure_of_readme_is_what_its_command_gives_today(tmp_path):
    problems = differences(tmp_path)
    assert not problems, (
        "README differs from its commands (rewrite: .venv/bin/python tests/readme_blocks.py --write):\n"
        + "\n".join(problems)
    )


def test_no_command_in_readme_writes_into_the_checkout():
    """A command pasted from README must not overwrite tracked files (``report -o docs/figures`` once did)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=README.parent, capture_output=True, text=True, check=False)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    tracked_folders = {Path(name).parts[0] for name in tracked.stdout.splitlines() if len(Path(name).parts) > 1}
    outputs = re.findall(
        r"chronomoe (?:report|replay|demo)\b[^`\n]*?(?:-o|--output-dir|--out)\s+(\S+)", README.read_text()
    )
    assert [output for output in outputs if Path(output).parts[0] in tracked_folders] == []

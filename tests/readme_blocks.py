"""README's outputs and figures, regenerated from the commands README names, and compared with README's copy.

README marks what a command produced with an HTML comment on the line
before it (invisible on GitHub):

* ``<!-- output: COMMAND -->`` before a fenced code block: the block is
  ``$ COMMAND`` followed by what the command prints on stdout. ``COMMAND`` is
  a ``chronomoe`` command line as README shows it (``.venv/bin/chronomoe ...``
  or ``chronomoe ...``), run as ``python -m chronomoe.cli ...``.
* ``<!-- output: python -->`` before a fenced code block: the block is what
  the ``python`` block above it prints (the example, run as a script).
* ``<!-- file: NAME -->`` before a fenced code block: the block is written to
  ``NAME`` before the commands after it run (a rules file a command reads).
* ``<!-- figure: PATH -->`` before an image link ``![...](FILE)``: ``FILE``
  (in the repository) is the file ``PATH`` that the commands above wrote.

Everything runs in one fresh working folder, in README's order, so paths such
as ``runs/demo-collapse`` mean the same as in README. ``tests/test_readme.py``
fails when a block or a figure differs;
``.venv/bin/python tests/readme_blocks.py --write`` rewrites them from a fresh
run (after changing the demo, the report or the summary format).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"

MARKER = re.compile(r"^<!-- (output|file|figure): (.+?) -->$")
FENCE = re.compile(r"^```")
IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)]+)\)$")
CHRONOMOE = (".venv/bin/chronomoe", "chronomoe")


@dataclass
class Block:
    """One marked part of README: ``lines[start:end]`` is its content (inside the fence, or the image line)."""

    kind: str  # output, file or figure
    argument: str  # the command, "python", the file name or the produced path
    start: int
    end: int
    source: str | None = None  # for "output: python", the python block above


def marked_blocks(lines: list[str]) -> list[Block]:
    """The marked blocks of README's lines, in order (a marker must be followed by its block)."""
    blocks = []
    last_python: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```python"):
            end = _fence_end(lines, index)
            last_python = "\n".join(lines[index + 1 : end]) + "\n"
            index = end + 1
            continue
        match = MARKER.match(line)
        index += 1
        if match is None:
            continue
        kind, argument = match.groups()
        if kind == "figure":
            if index >= len(lines) or not IMAGE.match(lines[index]):
                raise ValueError(f"README.md:{index}: a figure marker must precede an image link")
            blocks.append(Block(kind, argument, index, index + 1))
            continue
        if index >= len(lines) or not FENCE.match(lines[index]):
            raise ValueError(f"README.md:{index}: a {kind} marker must precede a fenced block")
        end = _fence_end(lines, index)
        source = last_python if argument == "python" else None
        if kind == "output" and argument == "python" and source is None:
            raise ValueError(f"README.md:{index}: 'output: python' needs a python block above it")
        blocks.append(Block(kind, argument, index + 1, end, source))
        index = end + 1
    return blocks


def _fence_end(lines: list[str], start: int) -> int:
    for index in range(start + 1, len(lines)):
        if FENCE.match(lines[index]):
            return index
    raise ValueError(f"README.md:{start + 1}: unclosed code block")


def command_argv(command: str) -> list[str]:
    """The argv that runs a README ``chronomoe`` command line with this interpreter."""
    words = shlex.split(command)
    if not words or words[0] not in CHRONOMOE:
        raise ValueError(f"README command {command!r} is not a chronomoe command")
    return [sys.executable, "-m", "chronomoe.cli", *words[1:]]


def run(argv: list[str], folder: Path) -> str:
    """What ``argv`` prints on stdout in ``folder``, lines stripped of trailing blanks, no trailing blank line."""
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{argv} exited {result.returncode}:\n{result.stderr}")
    return "\n".join(line.rstrip() for line in result.stdout.rstrip().splitlines())


def regenerate(lines: list[str], folder: Path) -> tuple[list[str], dict[Path, Path]]:
    """README's lines with every marked block regenerated in ``folder``, and the figures:
    ``{repository file: the file the commands wrote}``."""
    new_lines = list(lines)
    figures = {}
    # Replaced from the end, so that the line numbers of the blocks before stay right.
    contents: list[tuple[Block, list[str]]] = []
    for block in marked_blocks(lines):
        if block.kind == "file":
            (folder / block.argument).write_text("\n".join(lines[block.start : block.end]) + "\n")
        elif block.kind == "figure":
            image = IMAGE.match(lines[block.start])
            assert image is not None
            figures[REPOSITORY / image.group(1)] = folder / block.argument
        elif block.argument == "python":
            assert block.source is not None
            script = folder / "readme_example.py"
            script.write_text(block.source)
            contents.append((block, run([sys.executable, str(script)], folder).splitlines()))
        else:
            output = run(command_argv(block.argument), folder)
            contents.append((block, [f"$ {block.argument}", *output.splitlines()]))
    for block, content in reversed(contents):
        new_lines[block.start : block.end] = content
    return new_lines, figures


def differences(folder: Path) -> list[str]:
    """Unified diffs of README's blocks and the figures against a fresh run in ``folder`` (empty: all agree)."""
    lines = README.read_text().splitlines()
    new_lines, figures = regenerate(lines, folder)
    problems = list(difflib.unified_diff(lines, new_lines, "README.md", "regenerated", lineterm=""))
    for repository_file, produced in figures.items():
        if not produced.is_file():
            problems.append(f"{produced.relative_to(folder)}: not written by README's commands")
        elif produced.read_bytes() != repository_file.read_bytes():
            drawn = produced.relative_to(folder)
            problems.append(f"{repository_file.relative_to(REPOSITORY)} differs from the {drawn} drawn now")
    return problems


def write(folder: Path) -> None:
    """Rewrite README's blocks and figures from a fresh run in ``folder``."""
    lines = README.read_text().splitlines()
    new_lines, figures = regenerate(lines, folder)
    README.write_text("\n".join(new_lines) + "\n")
    for repository_file, produced in figures.items():
        shutil.copyfile(produced, repository_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README's blocks and figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.write:
            write(Path(folder))
            return 0
        problems = differences(Path(folder))
    print("\n".join(problems) or "README's blocks and figures agree with their commands")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

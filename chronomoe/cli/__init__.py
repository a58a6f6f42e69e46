"""The ``chronomoe`` command: demo, summary, replay, report, watch, decisions, validate, export, import, schema.

Exit codes: 0 success; 1 the answer is "no" (``summary``: a layer is
collapse_confirmed; ``validate``: invalid or repeated records, or nothing
recorded); 2 the command could not run (missing run folder or file, no
events, bad rules file, bad arguments) or ``summary``/``report`` skipped
corrupt lines; 141 the reader of the output went away (as a Unix tool ended
by SIGPIPE). Errors are one line on stderr, never a traceback.

The subcommands' modules (and torch, for ``demo`` only) are imported when a
subcommand runs, so ``chronomoe --help`` starts fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ChronoMoEError
from .options import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_NO, EXIT_OK
from .parser import build_parser

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_NO", "EXIT_OK", "build_parser", "command_line", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except (ChronoMoEError, OSError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"chronomoe {args.command}: error: {message}", file=sys.stderr)
    except ImportError as error:
        print(f"chronomoe {args.command}: error: missing dependency: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"chronomoe {args.command}: interrupted", file=sys.stderr)
    return EXIT_ERROR


def command_line() -> str:
    """How to call this installation's ``chronomoe`` command from the current shell, for hints printed to users.

    ``chronomoe`` when that name on the PATH is this installation's; else the
    path of its script (relative to the working folder when under it, as
    ``.venv/bin/chronomoe``); else ``python -m chronomoe.cli``.
    """
    script = Path(sys.executable).parent / "chronomoe"  # not resolved: a virtualenv's python is a link
    if not script.is_file():
        return f"{Path(sys.executable).name} -m chronomoe.cli"
    on_path = shutil.which("chronomoe")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "chronomoe"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _reader_went_away() -> int:
    """Exit as a Unix tool does when the reader of its output goes away (``chronomoe summary RUN | head -n 1``):
    no message, the status of a process ended by SIGPIPE (128 + 13), and nothing more written to the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit must not fail again
    os.close(devnull)
    return EXIT_BROKEN_PIPE

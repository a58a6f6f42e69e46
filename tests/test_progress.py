"""The progress bar every long command shows: on a terminal only, for work large enough to take a while."""

from __future__ import annotations

import io

from chronomoe.progress import PROGRESS_MIN_BYTES, count_lines, progress_bar, show_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_and_counts_what_was_done():
    terminal = Terminal()
    with progress_bar(2048, unit="B", description="reading", stream=terminal) as bar:
        bar.update(1024)
        bar.update(1024)
    assert "reading: 100%" in terminal.getvalue() and "2.00k/2.00k" in terminal.getvalue()


def test_nothing_is_drawn_when_the_output_is_not_a_terminal():
    piped = io.StringIO()
    with progress_bar(10, unit="event", stream=piped) as bar:
        bar.update(10)
    assert piped.getvalue() == ""


def test_nothing_is_drawn_when_disabled_even_on_a_terminal():
    terminal = Terminal()
    with progress_bar(10, stream=terminal, enabled=False) as bar:
        bar.update(10)
    assert terminal.getvalue() == ""


def test_a_bar_is_worth_showing_only_for_large_work_on_a_terminal():
    assert show_progress(PROGRESS_MIN_BYTES, stream=Terminal())
    assert not show_progress(PROGRESS_MIN_BYTES - 1, stream=Terminal())
    assert not show_progress(PROGRESS_MIN_BYTES, stream=io.StringIO())


def test_count_lines_counts_the_newlines_of_a_file(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"a\n" * 3 + b"torn")
    assert count_lines(path) == 3

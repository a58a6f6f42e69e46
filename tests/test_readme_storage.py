"""The Storage section's code blocks of README.md run as written, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def storage_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Storage\n") : text.index("## The `chronomoe` command")]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_storage_section_records_a_parquet_run_and_queries_it_with_duckdb_and_polars(tmp_path, monkeypatch):
    blocks = storage_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    expected = [comment for block in blocks for comment in re.findall(r"print\(.*\)  # (.*)", block)]
    assert printed.getvalue().splitlines() == expected

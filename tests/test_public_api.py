"""The public API is deliberate: ``chronomoe.__all__`` equals the checked-in list, and every name in it works."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import chronomoe


def checked_in() -> list[str]:
    return json.loads(resources.files("chronomoe.specs").joinpath("public_api.json").read_text())["chronomoe"]


def test_all_is_the_checked_in_list_so_every_change_to_it_is_deliberate():
    assert sorted(chronomoe.__all__) == checked_in(), (
        "chronomoe.__all__ changed: update specs/public_api.json in the same commit if the change is intended"
    )


def test_every_public_name_resolves():
    assert [name for name in chronomoe.__all__ if getattr(chronomoe, name, None) is None] == []


def test_no_module_is_exported_as_a_name():
    assert [name for name in chronomoe.__all__ if type(getattr(chronomoe, name)).__name__ == "module"] == []


def test_star_import_gives_exactly_the_public_names():
    namespace: dict[str, object] = {}
    exec("from chronomoe import *", namespace)
    assert sorted(name for name in namespace if not name.startswith("__")) == checked_in()


def test_importing_chronomoe_does_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, chronomoe; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"

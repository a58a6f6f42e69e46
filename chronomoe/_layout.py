"""Where ``chronomoe.controller``, ``chronomoe.lens`` and ``chronomoe.specs`` are found.

In the repository the governance layer and the contract stand beside the
telemetry core, as top-level folders (``controller/``, ``lens/``,
``specs/``); an installed package holds them inside ``chronomoe/``
(pyproject's ``package-dir``). An editable install maps them with its own
import hook. A checkout imported without that hook (``python -m pytest``
from the checkout, whose ``chronomoe/`` shadows a regular install, or
``PYTHONPATH=.``) would not find them: :func:`find_sibling_subpackages`
adds a finder for exactly these three names in that case, and nothing
otherwise.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

SIBLING_SUBPACKAGES = ("controller", "lens", "specs")
"""Subpackages of ``chronomoe`` that live in top-level folders of the repository."""


class _SiblingFinder(importlib.abc.MetaPathFinder):
    """Finds ``chronomoe.<name>`` in ``<checkout>/<name>/`` for the names of :data:`SIBLING_SUBPACKAGES`."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "chronomoe" or name not in SIBLING_SUBPACKAGES:
            return None
        folder = self.checkout / name
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def find_sibling_subpackages(package_dir: Path) -> None:
    """Make the sibling folders importable when ``package_dir`` is a checkout's ``chronomoe/``.

    Does nothing for an installed package (the subpackages are inside it)
    or when the finder is already registered for this checkout. In a
    checkout the siblings are always the right answer (an editable install
    maps to the same folders), so the finder goes first.
    """
    if all((package_dir / name / "__init__.py").is_file() for name in SIBLING_SUBPACKAGES):
        return
    checkout = package_dir.parent
    if not all((checkout / name / "__init__.py").is_file() for name in SIBLING_SUBPACKAGES):
        return
    if any(isinstance(finder, _SiblingFinder) and finder.checkout == checkout for finder in sys.meta_path):
        return
    # First on the path: a folder left behind in chronomoe/ by an older checkout (a __pycache__ once
    # chronomoe/controller/ held) would otherwise be found first, as an empty namespace package.
    sys.meta_path.insert(0, _SiblingFinder(checkout))

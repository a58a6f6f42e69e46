"""Every table in a docstring is a reStructuredText table that parses (the alert table, the topic table, ...).

Each simple table (``====`` borders) of every docstring of the package
(modules, classes, functions, methods) is cut out and parsed alone with
docutils, so that Google-style ``Args:`` sections around it do not matter;
Sphinx's cross-reference roles (``:class:``, ...) are read as literals.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
import re

import pytest
from docutils import nodes
from docutils.core import publish_doctree
from docutils.parsers.rst import roles

import chronomoe

SPHINX_ROLES = ("class", "func", "meth", "attr", "mod", "data", "exc", "obj", "const")
for role in SPHINX_ROLES:
    roles.register_generic_role(role, nodes.literal)


def package_modules() -> list[str]:
    names = ["chronomoe"]
    for module in pkgutil.walk_packages(chronomoe.__path__, "chronomoe."):
        names.append(module.name)
    for subpackage in ("chronomoe.controller", "chronomoe.lens", "chronomoe.specs"):
        package = importlib.import_module(subpackage)
        names += [subpackage] + [m.name for m in pkgutil.walk_packages(package.__path__, f"{subpackage}.")]
    optional = ("chronomoe.integrations.",)  # import their framework; checked when it is installed
    # A __main__ module runs its program when imported.
    return sorted({name for name in names if not name.startswith(optional) and not name.endswith(".__main__")})


def docstrings(module) -> list[tuple[str, str]]:
    found = [(module.__name__, module.__doc__ or "")]
    for name, member in vars(module).items():
        if getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member):
            found.append((f"{module.__name__}.{name}", member.__doc__ or ""))
            for attribute, value in vars(member).items():
                function = getattr(value, "__func__", value)
                if inspect.isfunction(function) and function.__doc__:
                    found.append((f"{module.__name__}.{name}.{attribute}", function.__doc__))
        elif inspect.isfunction(member) and member.__doc__:
            found.append((f"{module.__name__}.{name}", member.__doc__))
    return found


BORDER = re.compile(r"^\s*=+( +=+)+\s*$")


def simple_tables(text: str) -> list[str]:
    """The simple tables of a docstring: from a border line to the third border line (top, header, bottom)."""
    lines = inspect.cleandoc(text).splitlines()
    tables, start, borders = [], None, 0
    for number, line in enumerate(lines):
        if BORDER.match(line):
            start = number if start is None else start
            borders += 1
            if borders == 3:
                tables.append("\n".join(lines[start : number + 1]))
                start, borders = None, 0
    assert start is None, f"a table without its closing border:\n{lines[start]}"
    return tables


def table_problems(table: str) -> list[str]:
    doctree = publish_doctree(
        table, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": io.StringIO()}
    )
    found = [
        message.astext().splitlines()[0] for message in doctree.findall(nodes.system_message) if message["level"] >= 2
    ]
    if not any(True for _ in doctree.findall(nodes.table)):
        found.append("not parsed as a table")
    return found


@pytest.mark.parametrize("module_name", package_modules())
def test_every_table_in_the_modules_docstrings_parses(module_name):
    module = importlib.import_module(module_name)
    broken = {
        name: found
        for name, text in docstrings(module)
        for table in simple_tables(text)
        if (found := table_problems(table))
    }
    assert broken == {}


def test_the_alert_tables_are_found_and_parse():
    import chronomoe.alerts.machine
    import chronomoe.alerts.rules
    import chronomoe.topics

    for module in (chronomoe.alerts.machine, chronomoe.alerts.rules, chronomoe.topics):
        (table,) = simple_tables(module.__doc__)
        assert table_problems(table) == []

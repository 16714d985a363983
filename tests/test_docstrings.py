"""Docstrings are manuals: their `>>>` examples run as doctests, and every import a usage example shows resolves.

An example that needs data or a model says so with `# doctest: +SKIP` and a reason in the text around it.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest

PACKAGES = ("embedkit", "agents")
IMPORT_LINE = re.compile(r"^\s*(?:>>>\s*)?(from\s+(embedkit|agents)[\w.]*\s+import\s+[\w, ()]+|import\s+(embedkit|agents)[\w.]*)\s*$")


def all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not info.name.endswith(".__main__"):  # importing it would run the CLI
                names.append(info.name)
    return sorted(names)


MODULES = all_modules()


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_doctests_pass(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} doctest example(s) failed in {name}"


def _docstrings(module) -> list[str]:
    found = [module.__doc__ or ""]
    for value in vars(module).values():
        if getattr(value, "__module__", None) == module.__name__ and (getattr(value, "__doc__", None)):
            found.append(value.__doc__)
    return found


@pytest.mark.parametrize("name", MODULES)
def test_imports_shown_in_docstrings_resolve(name: str) -> None:
    module = importlib.import_module(name)
    for doc in _docstrings(module):
        for line in doc.splitlines():
            match = IMPORT_LINE.match(line)
            if match:
                statement = match.group(1).strip().rstrip("(")
                if "(" in statement:  # a multi-line import: check its first line's module only
                    statement = statement.split(" import ")[0].replace("from ", "import ")
                try:
                    exec(statement, {})
                except ImportError as error:
                    pytest.fail(f"{name}: docstring example `{statement}` fails: {error}")

"""Every docstring example in the package runs and holds (a hand-computed case per pure function)."""

import doctest
import importlib
import pkgutil

import pytest

import recbole_ext

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(recbole_ext.__path__, prefix="recbole_ext.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0, name

"""Every docstring example in the package and in the benchmark scripts runs and holds (a
hand-computed case per pure function)."""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import recbole_ext
from tests.conftest import REPO_DIR

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(recbole_ext.__path__, prefix="recbole_ext.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0, name


SCRIPTS = sorted(p.name for p in (REPO_DIR / "benchmarks").glob("*.py") if ">>>" in p.read_text())


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_docstring_examples(name):
    spec = importlib.util.spec_from_file_location(name[:-3], REPO_DIR / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run only under __main__
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0, name

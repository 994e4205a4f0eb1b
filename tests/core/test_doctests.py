"""The docstrings' examples run: every ``Example:`` in rxf's modules is a doctest."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rxf

MODULES = sorted(info.name for info in pkgutil.iter_modules(rxf.__path__, "rxf."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert failures == 0, f"{name}: {failures} docstring example(s) failed (run with -s)"

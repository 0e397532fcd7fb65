"""Every `Example:` in the public docstrings runs and prints what it says."""

import doctest
import importlib

import pytest

MODULES = ["tritonwino.adder", "tritonwino.functional", "tritonwino.modules", "tritonwino.packing", "tritonwino.tables",
           "tritonwino.testing", "tritonwino.transforms", "tritonwino.tuning.timer",
           "tritonwino.experiments.training", "tritonwino.experiments.rows", "tritonwino.experiments.models",
           "tritonwino.experiments.converged_grid", "tritonwino.pruning.layers"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0

"""Every exception jaxmat defines lives in ``jaxmat.errors`` (issue 48 item 3): one home, imported downwards."""

import ast
import importlib
import inspect
import pkgutil

import jaxmat
import jaxmat.errors as errors


def _jaxmat_modules():
    for info in pkgutil.walk_packages(jaxmat.__path__, "jaxmat."):
        if not info.name.startswith("jaxmat.pretrained"):
            yield importlib.import_module(info.name)


def test_every_public_exception_is_defined_in_errors():
    found = {}
    for module in _jaxmat_modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("jaxmat"):
                found.setdefault(obj, set()).add(f"{module.__name__}.{name}")
    public = {cls for cls in found if not cls.__name__.startswith("_")}
    elsewhere = {cls.__name__: cls.__module__ for cls in public if cls.__module__ != "jaxmat.errors"}
    assert not elsewhere, f"exceptions defined outside jaxmat.errors: {elsewhere}"
    assert {cls.__name__ for cls in public} == set(errors.__all__)
    # the names the README and the old homes give are the same classes
    assert {"NeighborOverflowError", "ConversionError", "FormulaError", "RefusedStructure"} <= set(errors.__all__)
    from jaxmat._checks import ConfigError
    from jaxmat.composition import FormulaError
    from jaxmat.convert import ConversionError
    from jaxmat.graph import StructureError
    from jaxmat.simulate import NeighborOverflowError
    from jaxmat.train import CheckpointError

    assert (ConfigError, FormulaError, ConversionError, StructureError, NeighborOverflowError, CheckpointError) == (
        errors.ConfigError, errors.FormulaError, errors.ConversionError, errors.StructureError,
        errors.NeighborOverflowError, errors.CheckpointError)
    assert issubclass(errors.RefusedStructure, errors.StructureError)
    assert all(issubclass(getattr(errors, n), (ValueError, RuntimeError)) for n in errors.__all__)


def test_errors_module_imports_nothing():
    tree = ast.parse(inspect.getsource(errors))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]

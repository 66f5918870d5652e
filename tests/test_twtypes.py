"""fedd/twtypes.py declares signatures mypy trusts for unannotated Twisted classes: every declared
method must exist on the Twisted class fedd gets at run time, with the same parameters, so a Twisted
upgrade that renames or reshapes one fails here instead of leaving a wrong type behind."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import fedd.twtypes

SOURCE = Path(fedd.twtypes.__file__).read_text()


def _declared() -> dict[str, ast.ClassDef]:
    """The classes declared under `if TYPE_CHECKING:`."""
    for node in ast.parse(SOURCE).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return {c.name: c for c in node.body if isinstance(c, ast.ClassDef)}
    raise AssertionError("no TYPE_CHECKING block in fedd/twtypes.py")


DECLARED = _declared()


def test_every_exported_name_is_declared_and_is_twisteds_own_class() -> None:
    assert sorted(DECLARED) == sorted(fedd.twtypes.__all__)
    for name in fedd.twtypes.__all__:
        runtime = getattr(fedd.twtypes, name)
        assert runtime.__module__.startswith("twisted."), (name, runtime)
        assert runtime.__name__ == name


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declared_methods_match_twisted(name: str) -> None:
    runtime = getattr(fedd.twtypes, name)
    methods = [f for f in DECLARED[name].body if isinstance(f, ast.FunctionDef)]
    assert methods  # a class declared for nothing would be dead weight
    for method in methods:
        real = getattr(runtime, method.name, None)
        assert callable(real), f"{name}.{method.name} is gone from Twisted"
        declared = [a.arg for a in method.args.args + method.args.kwonlyargs]
        params = inspect.signature(real).parameters.values()
        actual = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert declared == actual, f"{name}.{method.name}: declared {declared}, Twisted has {actual}"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declared_attributes_exist(name: str) -> None:
    runtime = getattr(fedd.twtypes, name)
    for node in DECLARED[name].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attribute = node.target.id
            instance_only = attribute in {"services", "namedServices"}  # set by MultiService.__init__
            assert instance_only or hasattr(runtime, attribute), f"{name}.{attribute} is gone from Twisted"

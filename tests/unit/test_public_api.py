"""The public surface: fluxaorm's __all__, docstrings, version, typing marker, errors."""

import inspect
import re
from importlib import resources

import pytest

import fluxaorm

PUBLIC = [name for name in fluxaorm.__all__ if name != "__version__"]


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """Ruff RUF022's order: CONSTANTS, then CamelCase, then the rest, naturally sorted."""
    category = 0 if name.isupper() else 1 if name[0].isupper() else 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)
    ]
    return category, natural


def test_all_is_sorted() -> None:
    """__all__ is sorted as ruff's RUF022 sorts it, without duplicates."""
    assert fluxaorm.__all__ == sorted(fluxaorm.__all__, key=_isort_key)
    assert len(set(fluxaorm.__all__)) == len(fluxaorm.__all__)


def test_every_name_exists() -> None:
    """Every name of __all__ is an attribute of the package."""
    missing = [name for name in fluxaorm.__all__ if not hasattr(fluxaorm, name)]
    assert missing == []


def test_spec_names_are_exported() -> None:
    """The names SPEC.md promises are importable from fluxaorm."""
    for name in [
        "Registry",
        "Engine",
        "ORM",
        "Where",
        "Pager",
        "column",
        "entity",
        "Insert",
        "Update",
        "Delete",
        "DirtyStreamEvent",
        "FluxaORMError",
        "SchemaError",
        "ConfigurationError",
        "ValidationError",
        "DatabaseError",
        "DuplicateKeyError",
        "StreamError",
    ]:
        assert name in fluxaorm.__all__


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_have_docstrings(name: str) -> None:
    """Every public name, and every public method of a public class, has a docstring."""
    obj = getattr(fluxaorm, name)
    assert (inspect.getdoc(obj) or "").strip(), f"{name} has no docstring"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if inspect.isfunction(value) or isinstance(
                value, (property, classmethod, staticmethod)
            ):
                assert (inspect.getdoc(value) or "").strip(), (
                    f"{name}.{attr} has no docstring"
                )


def test_version() -> None:
    """__version__ is a version string."""
    assert isinstance(fluxaorm.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", fluxaorm.__version__)


def test_py_typed_is_shipped() -> None:
    """The package ships py.typed, so type checkers read its hints."""
    assert resources.files("fluxaorm").joinpath("py.typed").is_file()


def test_error_tree() -> None:
    """Errors form the documented tree under FluxaORMError."""
    assert issubclass(fluxaorm.SchemaError, fluxaorm.FluxaORMError)
    assert issubclass(fluxaorm.SchemaError, ValueError)
    assert issubclass(fluxaorm.ValidationError, fluxaorm.FluxaORMError)
    assert issubclass(fluxaorm.ValidationError, ValueError)
    assert issubclass(fluxaorm.ConfigurationError, fluxaorm.FluxaORMError)
    assert issubclass(fluxaorm.DatabaseError, fluxaorm.FluxaORMError)
    assert issubclass(fluxaorm.DuplicateKeyError, fluxaorm.DatabaseError)
    assert issubclass(fluxaorm.StreamError, fluxaorm.FluxaORMError)


def test_located_error_messages() -> None:
    """SchemaError and ValidationError prefix their message with Entity.field."""
    err = fluxaorm.ValidationError(
        "120 characters, the column allows 100", "UserEntity", "name"
    )
    assert str(err) == "UserEntity.name: 120 characters, the column allows 100"
    assert (err.entity, err.field) == ("UserEntity", "name")
    assert str(fluxaorm.SchemaError("has no id field", "UserEntity")) == (
        "UserEntity: has no id field"
    )
    assert str(fluxaorm.SchemaError("plain")) == "plain"


def test_operations() -> None:
    """Insert, Update and Delete are the Operation members with the wire actions."""
    assert fluxaorm.Insert is fluxaorm.Operation.Insert
    assert (fluxaorm.Insert.value, fluxaorm.Update.value, fluxaorm.Delete.value) == (
        "add",
        "edit",
        "delete",
    )

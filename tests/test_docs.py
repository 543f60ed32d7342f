"""Docs that cannot go stale: the reference pages match the code, and the public surface is tidy."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic_settings import BaseSettings

import modeldepot
from modeldepot.client.settings import ClientSettings
from modeldepot.config import Settings
from modeldepot.errors import ALL_ERRORS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    """scripts/gen_docs.py, imported in-process (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_reference_pages_match_the_code(gen_docs: ModuleType) -> None:
    stale = gen_docs.stale_pages()
    assert not stale, f"{', '.join(stale)} out of date: run python scripts/gen_docs.py"


def test_public_surface_is_sorted_and_exists() -> None:
    names = list(modeldepot.__all__)
    assert names == sorted(names), "keep modeldepot.__all__ sorted"
    assert len(names) == len(set(names)), "a name appears twice in modeldepot.__all__"
    missing = [name for name in names if not hasattr(modeldepot, name)]
    assert not missing, f"modeldepot.__all__ names what the package does not define: {missing}"


@pytest.mark.parametrize("settings_class", [Settings, ClientSettings], ids=lambda c: c.__name__)
def test_every_setting_is_documented(settings_class: type) -> None:
    text = (REFERENCE / "settings.md").read_text(encoding="utf-8")
    names = (
        list(settings_class.model_fields)
        if issubclass(settings_class, BaseSettings)
        else [f.name for f in dataclasses.fields(settings_class)]
    )
    missing = [f"MODELDEPOT_{name.upper()}" for name in names if f"`MODELDEPOT_{name.upper()}`" not in text]
    assert not missing, f"docs/reference/settings.md lacks {missing}: run python scripts/gen_docs.py"


def test_every_error_is_documented() -> None:
    text = (REFERENCE / "errors.md").read_text(encoding="utf-8")
    missing = [cls.code for cls in ALL_ERRORS if f"## {cls.code}\n" not in text]
    assert not missing, f"docs/reference/errors.md lacks {missing}: run python scripts/gen_docs.py"

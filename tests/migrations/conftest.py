"""The sample application (tests/fixtures/sampleapp) and databases at its head."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sampleapp"


@pytest.fixture(scope="session")
def sample_models() -> ModuleType:
    if str(SAMPLE) not in sys.path:
        sys.path.insert(0, str(SAMPLE))
    return importlib.import_module("sampleapp.models")

"""Fixtures for the attack tests: the tenancy tests' world, client and production-shape app.

They are the fixtures of tests/tenancy/conftest.py, loaded once under that module's own name,
so both folders share one module (and one set of test tables) in a run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_NAME = "tests.tenancy.conftest"


def _tenancy_fixtures() -> ModuleType:
    module = sys.modules.get(_NAME)
    if module is None:
        path = Path(__file__).resolve().parents[1] / "tenancy" / "conftest.py"
        spec = importlib.util.spec_from_file_location(_NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return module


_fixtures = _tenancy_fixtures()
identity = _fixtures.identity
tenancy = _fixtures.tenancy
world = _fixtures.world
client = _fixtures.client
rls_app = _fixtures.rls_app

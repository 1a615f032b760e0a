"""The sample application (tests/fixtures/sampleapp), copies of it, and an HTTP client."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sampleapp"

Client = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]
AddRevision = Callable[[Path, str, str, str], Path]


@pytest.fixture(scope="session")
def sample_models() -> ModuleType:
    if str(SAMPLE) not in sys.path:
        sys.path.insert(0, str(SAMPLE))
    return importlib.import_module("sampleapp.models")


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.fixture(scope="session")
def client() -> Client:
    """`async with client(app) as c:` runs the app's lifespan around an httpx client."""
    return _client


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A copy of the sample application's folder, to add revisions to."""
    target = tmp_path / "sampleapp"
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


_REVISION = '''"""{message}

Revision ID: {rev}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "{table}",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("{table}")
'''


def _add_revision(app_dir: Path, rev: str, down: str, table: str) -> Path:
    path = app_dir / "migrations" / "versions" / f"{rev}.py"
    message = f"{table} table"
    path.write_text(_REVISION.format(message=message, rev=rev, down=down, table=table))
    return path


@pytest.fixture(scope="session")
def add_revision() -> AddRevision:
    """`add_revision(app_dir, rev, down_revision, table)` writes a revision creating `table`."""
    return _add_revision

"""Fixtures for tenancy tests: a migrated database, two tenants, users of each role, an app."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import MetaData, Text
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.orm import NAMING_CONVENTION, TenantScoped, UUIDPrimaryKey
from pgstack.orm.mixins import Audited
from pgstack.repository import Repository
from pgstack.tenancy import Tenancy, Tenant
from pgstack.testing.templates import _admin, run_async
from pgstack.web import create_app
from pgstack.web.deps import SessionDep
from pgstack.web.identity import identity_router
from pgstack.web.tenancy import (
    TenantAccess,
    TenantAccessDep,
    require_tenant_role,
    tenancy_router,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tenancy_rls_setup import ACME, GLOBEX, RlsApp, cli, raw, write_project

STRONG = "violet Harbour 42 lanterns drift"
PROBLEM = "application/problem+json"


@pytest.fixture
def identity(pgstack_migrated_db: Database) -> Identity:
    return Identity(pgstack_migrated_db)


@pytest.fixture
def tenancy(pgstack_migrated_db: Database) -> Tenancy:
    return Tenancy(pgstack_migrated_db)


async def make_user(identity: Identity, email: str, **extra: object) -> User:
    return await identity.users.create(email, STRONG, verified=True, **extra)  # type: ignore[arg-type]


# -- a tenant-scoped table of the application's own, to prove isolation through routes ------


class NotesBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Note(UUIDPrimaryKey, TenantScoped, Audited, NotesBase):
    __tablename__ = "tenancy_test_notes"

    body: Mapped[str] = mapped_column(Text, nullable=False)


class NoteRepository(Repository[Note]):
    model = Note


class NoteIn(BaseModel):
    body: Annotated[str, Field(max_length=1000)]


class NoteOut(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    body: str
    created_by: str | None


Writer = Annotated[TenantAccess, Depends(require_tenant_role("member"))]


def notes_router() -> APIRouter:
    """An application's own tenant routes, written the way the guide shows."""
    router = APIRouter()

    def out(note: Note) -> NoteOut:
        return NoteOut(
            id=note.id, tenant_id=note.tenant_id, body=note.body, created_by=note.created_by
        )

    @router.get("/notes")
    async def list_notes(access: TenantAccessDep, session: SessionDep) -> list[NoteOut]:
        return [out(n) for n in await NoteRepository(session).list()]

    @router.get("/notes/{note_id:uuid}")
    async def get_note(note_id: uuid.UUID, access: TenantAccessDep, session: SessionDep) -> NoteOut:
        return out(await NoteRepository(session).get(note_id))

    @router.post("/notes", status_code=201)
    async def create_note(
        body: NoteIn,
        access: Writer,
        session: SessionDep,
    ) -> NoteOut:
        note = await NoteRepository(session).create(body=body.body)
        await session.commit()
        return out(note)

    @router.delete("/notes/{note_id:uuid}", status_code=204)
    async def delete_note(note_id: uuid.UUID, access: TenantAccessDep, session: SessionDep) -> None:
        await NoteRepository(session).hard_delete(note_id)
        await session.commit()

    return router


@dataclass
class World:
    """Two tenants A and B; in A an owner, an admin, a member and a viewer; in B its owner."""

    a: Tenant
    b: Tenant
    owner: User
    admin: User
    member: User
    viewer: User
    b_owner: User


@pytest.fixture
async def world(identity: Identity, tenancy: Tenancy) -> World:
    owner = await make_user(identity, "owner@a.example")
    admin = await make_user(identity, "admin@a.example")
    member = await make_user(identity, "member@a.example")
    viewer = await make_user(identity, "viewer@a.example")
    b_owner = await make_user(identity, "owner@b.example")
    a = await tenancy.tenants.create("TA", "Tenant A", owner_id=owner.id)
    b = await tenancy.tenants.create("TB", "Tenant B", owner_id=b_owner.id)
    for user, role in ((admin, "admin"), (member, "member"), (viewer, "viewer")):
        await tenancy.memberships.add(a.id, user.id, role)
    return World(a, b, owner, admin, member, viewer, b_owner)


@pytest.fixture
async def client(
    pgstack_migrated_settings: Settings, pgstack_migrated_db: Database
) -> AsyncIterator[httpx.AsyncClient]:
    async with pgstack_migrated_db.engine.begin() as conn:
        await conn.run_sync(NotesBase.metadata.create_all)
    app = create_app(
        pgstack_migrated_settings,
        monitor_interval=None,
        routers=[identity_router(), tenancy_router(), notes_router()],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def bearer(token: str, tenant: object = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["X-Tenant-ID"] = str(tenant)
    return headers


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return dict(response.json())


async def login(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post("/auth/login", json={"email": email, "password": STRONG})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


# -- the production shape: `db init` roles, migrations run by the owner (row-level security) --


@pytest.fixture
def rls_app(
    pgstack_server_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RlsApp]:
    """A new database made by `db init`, migrated by the owner, with tenants ACME and GLOBEX."""
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_rls_{tag}"
    folder = tmp_path / "rlsapp"
    app = RlsApp(
        admin=pgstack_server_url,
        owner=pgstack_server_url.set(
            username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
        ),
        app=pgstack_server_url.set(
            username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
        ),
        project=write_project(folder),
    )
    monkeypatch.chdir(tmp_path)  # no stray .env or pyproject.toml
    env: dict[str, str | None] = {
        "DATABASE_URL": raw(app.app),
        "DATABASE_MIGRATION_URL": raw(app.owner),
        "PGSTACK_ENV": "development",
    }
    try:
        made = cli("db", "init", "--admin-url", raw(app.admin), env=env)
        assert made.exit_code == 0, made.output
        migrated = cli("db", "upgrade", "--project", str(folder), env=env)
        assert migrated.exit_code == 0, migrated.output
        run_async(
            lambda: _admin(
                app.owner,
                "INSERT INTO tenants (id, external_id, name) VALUES "
                f"('{ACME}', 'acme', 'acme'), ('{GLOBEX}', 'globex', 'globex')",
            )
        )
        yield app
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{app.app.username}"',
                f'DROP ROLE IF EXISTS "{app.owner.username}"',
            )
        )

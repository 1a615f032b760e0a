"""Secret columns cannot be filtered or sorted on: no `password_hash__like` oracle.

A repository that lists a secret column (encrypted, marked secret, or named like a password,
hash, token or key) in `filterable` or `sortable` is refused when its class is defined,
unless `allow_secret_fields` names it too; by default such columns are not queryable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import Request
from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository, Settings
from pgstack.crypto import KeyRing
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError, InvalidQueryError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, EncryptedText, ModelMixin
from pgstack.repository import Like, Sort
from pgstack.web import SessionDep, create_app

CreateTables = Callable[[MetaData], Awaitable[None]]
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"


class SecretBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Account(SecretBase):
    __tablename__ = "secret_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str | None]
    passwordChangedAt: Mapped[str | None]  # camelCase on purpose: split at case changes
    api_key: Mapped[str | None]
    invite_token: Mapped[str | None]
    token_type: Mapped[str | None]
    sort_key: Mapped[int | None]
    note: Mapped[str | None] = mapped_column(EncryptedText())
    internal: Mapped[str | None] = mapped_column(info={"secret": True})


class Accounts(Repository[Account]):
    model = Account


@pytest.fixture(autouse=True)
async def tables(
    create_tables: CreateTables, pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    await create_tables(SecretBase.metadata)
    async with pgstack_db.transaction() as session:
        await Accounts(session).create(
            email="a@example.com", password_hash=HASH, invite_token="inv-1", note="n"
        )


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("password_hash", "filterable"),
        ("api_key", "filterable"),
        ("invite_token", "sortable"),
        ("note", "sortable"),  # EncryptedText
        ("internal", "filterable"),  # info={"secret": True}
    ],
)
def test_a_secret_column_in_filterable_or_sortable_is_refused_at_class_definition(
    field: str, where: str
) -> None:
    # proves: R2, I7
    with pytest.raises(ConfigurationError, match=rf"Leaky\.{where} lists '{field}'"):
        type("Leaky", (Repository,), {"model": Account, where: ("email", field)})


def test_the_override_names_the_columns_that_only_look_secret() -> None:
    # proves: R2
    class Invites(Repository[Account]):
        model = Account
        filterable = ("email", "invite_token", "token_type", "sort_key", "passwordChangedAt")
        sortable = ("invite_token",)
        allow_secret_fields = ("invite_token",)

    with pytest.raises(ConfigurationError, match="allow_secret_fields names 'nope'"):
        type("Typo", (Repository,), {"model": Account, "allow_secret_fields": ("nope",)})
    with pytest.raises(ConfigurationError, match=r"is the string 'email'; give a tuple"):
        type("Bare", (Repository,), {"model": Account, "filterable": "email"})
    assert Invites.allow_secret_fields == ("invite_token",)


async def test_secret_columns_are_not_queryable_by_default(pgstack_db: Database) -> None:
    # proves: R2, I7
    async with pgstack_db.session() as session:
        accounts = Accounts(session)
        for field in ("password_hash", "api_key", "invite_token", "note", "internal"):
            with pytest.raises(InvalidQueryError, match=f"by '{field}'"):
                await accounts.count(Like(field, "$argon2%"))
            with pytest.raises(InvalidQueryError, match=f"by '{field}'"):
                await accounts.list(sort=Sort(field))
        # Names that only contain a secret word stay queryable.
        assert await accounts.count(token_type=None, sort_key=None) == 1


async def test_an_attacker_cannot_probe_a_hash_through_a_listing(
    pgstack_settings: Settings,
) -> None:
    # proves: R2, I7, W2
    app = create_app(pgstack_settings, monitor_interval=None)

    @app.get("/accounts")
    async def listing(request: Request, session: SessionDep) -> dict[str, Any]:
        accounts = Accounts(session)
        query = accounts.parse_query(request.query_params)
        page = await accounts.page(*query.filters, sort=query.sort)
        return {"total": page.total}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/accounts?email__like=a%25")).json() == {"total": 1}
            for probe in ("password_hash__like=%24argon2%25", "sort=password_hash", "note=n"):
                answer = await client.get(f"/accounts?{probe}")
                assert answer.status_code == 422, probe
                assert "allowed fields are" in answer.json()["detail"]
                assert HASH not in answer.text

"""Column types: JSONB, UTC datetimes and e-mail addresses.

JSONB whose in-place changes are saved at any depth, UTC datetimes that refuse naive values,
and e-mail addresses compared case-insensitively.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import MetaData, String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import ConflictError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    BigIntPrimaryKey,
    Email,
    ModelMixin,
    TrackedDict,
)
from pgstack.repository import Eq, ILike

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class TypesBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Profile(BigIntPrimaryKey, TypesBase):
    __tablename__ = "types_profiles"
    email: Mapped[str] = mapped_column(Email(), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[list[Any]] = mapped_column(default=list)
    extra: Mapped[dict[str, Any] | None]
    seen_at: Mapped[datetime | None]
    name: Mapped[str] = mapped_column(String(50), default="")


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(TypesBase.metadata)


async def reload(db: Database, id: int) -> Profile:
    async with db.session() as session:
        return await Repository(session, Profile).get(id)


async def test_in_place_json_changes_at_any_depth_are_saved(pgstack_db: Database) -> None:
    # proves: M4, D1
    async with pgstack_db.transaction() as session:
        profile = await Repository(session, Profile).create(
            email="a@x.io", settings={"ui": {"theme": "dark", "tabs": [1]}}, history=[]
        )
    async with pgstack_db.transaction() as session:
        p = await Repository(session, Profile).get(profile.id)
        p.settings["ui"]["theme"] = "light"  # two levels down
        p.settings["ui"]["tabs"].append(2)  # a list inside a dict
        p.settings.setdefault("lang", "fr")
        p.history.append({"event": "login"})
        p.history[0]["ip"] = "10.0.0.1"  # a dict inside a list, added in this session
    stored = await reload(pgstack_db, profile.id)
    assert stored.settings == {"ui": {"theme": "light", "tabs": [1, 2]}, "lang": "fr"}
    assert stored.history == [{"event": "login", "ip": "10.0.0.1"}]


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["ui"].pop("theme"),
        lambda s: s["ui"].update(theme="blue"),
        lambda s: s["ui"].__delitem__("theme"),
        lambda s: s["ui"]["tabs"].extend([7, 8]),
        lambda s: s["ui"]["tabs"].insert(0, 0),
        lambda s: s["ui"]["tabs"].remove(1),
        lambda s: s["ui"]["tabs"].__setitem__(0, 9),
        lambda s: s["ui"]["tabs"].sort(reverse=True),
        lambda s: s["ui"].clear(),
    ],
)
async def test_every_kind_of_in_place_change_is_saved(pgstack_db: Database, change: Any) -> None:
    # proves: M4, D1
    start = {"ui": {"theme": "dark", "tabs": [1, 3]}}
    async with pgstack_db.transaction() as session:
        profile = await Repository(session, Profile).create(email="b@x.io", settings=start)
    expected = copy.deepcopy(start)
    change(expected)
    async with pgstack_db.transaction() as session:
        p = await Repository(session, Profile).get(profile.id)
        change(p.settings)
        assert p.settings == expected
    assert (await reload(pgstack_db, profile.id)).settings == expected


async def test_json_null_scalars_and_copies(pgstack_db: Database) -> None:
    # proves: M4
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Profile)
        empty = await repo.create(email="c@x.io")
        scalar = await repo.create(email="d@x.io", extra=None)
        await session.execute(
            text("UPDATE types_profiles SET history = '\"text\"' WHERE id = :i"), {"i": scalar.id}
        )
    async with pgstack_db.session() as session:
        assert (
            await session.scalar(text("SELECT count(*) FROM types_profiles WHERE extra IS NULL"))
            == 2
        )
        repo = Repository(session, Profile)
        assert (await repo.get(empty.id)).extra is None
        assert (await repo.get(scalar.id)).history == "text"  # a JSON string is read as is
        loaded = await repo.get(empty.id)
        assert isinstance(loaded.settings, TrackedDict)
        # Copies and pickles are plain values, not tied to the row.
        assert type(copy.deepcopy(loaded.settings)) is dict
        assert type(pickle.loads(pickle.dumps(loaded.settings))) is dict


async def test_datetimes_are_utc_and_naive_ones_are_refused(pgstack_db: Database) -> None:
    # proves: M4, D1
    paris = timezone(timedelta(hours=2))
    moment = datetime(2026, 6, 1, 14, 0, tzinfo=paris)
    async with pgstack_db.transaction() as session:
        profile = await Repository(session, Profile).create(email="e@x.io", seen_at=moment)
    stored = await reload(pgstack_db, profile.id)
    assert stored.seen_at == moment and stored.seen_at.tzinfo is UTC
    assert stored.seen_at.hour == 12
    with pytest.raises(Exception, match="naive datetime"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Profile).create(email="f@x.io", seen_at=datetime(2026, 1, 1))


async def test_email_is_case_insensitive_and_unique(pgstack_db: Database) -> None:
    # proves: M4
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Profile)
        created = await repo.create(email="  Ada.Lovelace@Example.COM ")
        assert created.email == "ada.lovelace@example.com"
        assert (await repo.get_by(email="ADA.LOVELACE@example.com")).id == created.id
        assert await repo.count(Eq("email", "Ada.Lovelace@EXAMPLE.com")) == 1
        assert await repo.count(ILike("email", "%@EXAMPLE.COM")) == 1
        found = await session.scalar(
            select(Profile.id).where(Profile.email == "ADA.lovelace@Example.com")
        )
        assert found == created.id
    with pytest.raises(ConflictError, match="uq_types_profiles_email"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Profile).create(email="ada.LOVELACE@example.com")

"""Registry helpers: list models, find one by name, describe it, create and drop all."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from sqlalchemy import ForeignKey, Index, MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import NotFoundError, ProductionSafetyError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    EncryptedText,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    create_all,
    describe_model,
    drop_all,
    get_model,
    list_models,
)


class RegistryBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Team(UUIDPrimaryKey, RegistryBase):
    __tablename__ = "reg_teams"
    name: Mapped[str] = mapped_column(String(80), unique=True)


class Member(UUIDPrimaryKey, Timestamped, SoftDelete, RegistryBase):
    __tablename__ = "reg_members"
    __table_args__ = (Index(None, "team_id", "joined"),)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("reg_teams.id", ondelete="CASCADE"))
    nickname: Mapped[str | None] = mapped_column(String(40), index=True)
    joined: Mapped[datetime]
    api_secret: Mapped[str | None] = mapped_column(EncryptedText())


def test_list_and_find_models_by_class_or_table_name() -> None:
    # proves: M3
    assert list_models(RegistryBase) == [Member, Team]
    assert get_model("Member", RegistryBase) is Member
    assert get_model("reg_teams", RegistryBase) is Team
    with pytest.raises(NotFoundError, match="the models are: Member, Team"):
        get_model("Ghost", RegistryBase)


def test_describe_lists_columns_indexes_and_constraints() -> None:
    # proves: M3
    described = describe_model(Member)
    assert described.table == "reg_members"
    assert [c.name for c in described.columns][:2] == ["id", "team_id"]
    joined = described.column("joined")
    assert (joined.type, joined.nullable, joined.python_type) == (
        "TIMESTAMP WITH TIME ZONE",
        False,
        "datetime",
    )
    created = described.column("created_at")
    assert created.server_default == "now()" and not created.nullable
    assert described.column("id").default == "new_uuid7" and described.column("id").primary_key
    assert described.column("api_secret").secret and not described.column("nickname").secret
    assert {(i.name, i.columns, i.unique) for i in described.indexes} == {
        ("ix_reg_members_nickname", ("nickname",), False),
        ("ix_reg_members_team_id_reg_members_joined", ("team_id", "joined"), False),
    }
    constraints = {(c.kind, c.name, c.columns, c.references) for c in described.constraints}
    assert constraints == {
        ("primary key", "pk_reg_members", ("id",), None),
        ("foreign key", "fk_reg_members_team_id_reg_teams", ("team_id",), "reg_teams.id"),
    }
    assert set(described.mixins) == {"UUIDPrimaryKey", "Timestamped", "SoftDelete"}
    assert described.to_dict()["table"] == "reg_members"
    with pytest.raises(NotFoundError):
        described.column("nope")


async def test_create_all_and_drop_all(pgstack_db: Database) -> None:
    # proves: M3
    await create_all(pgstack_db, RegistryBase)
    try:
        async with pgstack_db.session() as session:
            tables = set(
                (
                    await session.execute(
                        text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'reg_%'")
                    )
                ).scalars()
            )
        assert tables == {"reg_teams", "reg_members"}
    finally:
        await drop_all(pgstack_db, RegistryBase)
    async with pgstack_db.session() as session:
        left = await session.scalar(
            text("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'reg_%'")
        )
    assert left == 0


async def test_create_all_and_drop_all_are_refused_in_production(
    pgstack_settings: Settings,
) -> None:
    # proves: M3
    production = Database(pgstack_settings.model_copy(update={"environment": "production"}))
    with pytest.raises(ProductionSafetyError, match="migrations"):
        await create_all(production, RegistryBase)
    with pytest.raises(ProductionSafetyError):
        await drop_all(production, RegistryBase)

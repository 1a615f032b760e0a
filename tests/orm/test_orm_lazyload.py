"""Implicit lazy loads on pgstack models raise a pgstack error that names the fix.

It replaces SQLAlchemy's MissingGreenlet; the explicit ways to load keep working.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import ForeignKey, MetaData, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import LazyLoadError, PgStackError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, Base, BigIntPrimaryKey, ModelMixin

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class LazyBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Author(BigIntPrimaryKey, LazyBase):
    __tablename__ = "lazy_authors"
    name: Mapped[str]
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Post(BigIntPrimaryKey, LazyBase):
    __tablename__ = "lazy_posts"
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("lazy_authors.id"))
    author: Mapped[Author] = relationship(back_populates="posts")


class PlainBase(DeclarativeBase):
    metadata = MetaData()


class PlainAuthor(PlainBase):
    __tablename__ = "lazy_plain_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    posts: Mapped[list[PlainPost]] = relationship()


class PlainPost(PlainBase):
    __tablename__ = "lazy_plain_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("lazy_plain_authors.id"))


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables, pgstack_db: Database) -> None:
    await create_tables(LazyBase.metadata)
    await create_tables(PlainBase.metadata)
    async with pgstack_db.transaction() as session:
        author = await Repository(session, Author).create(name="Ursula")
        await Repository(session, Post).create(title="Earthsea", author_id=author.id)
        session.add(PlainAuthor(id=1))
        await session.flush()
        session.add(PlainPost(id=1, author_id=1))


def test_pgstacks_base_has_the_guard() -> None:
    # proves: D1
    assert issubclass(Base, ModelMixin)


async def test_reading_an_unloaded_relationship_names_the_fix(pgstack_db: Database) -> None:
    # proves: D1
    async with pgstack_db.session() as session:
        post = (await Repository(session, Post).list())[0]
        with pytest.raises(LazyLoadError) as info:
            _ = post.author
        message = info.value.message
        assert "Post.author is not loaded" in message
        assert "selectinload(Post.author)" in message
        assert 'await session.refresh(obj, ["author"])' in message
        assert isinstance(info.value, PgStackError)
        author = (await Repository(session, Author).list())[0]
        with pytest.raises(LazyLoadError, match=r"Author\.posts is not loaded"):
            _ = author.posts


async def test_the_explicit_ways_to_load_work(pgstack_db: Database) -> None:
    # proves: D1
    async with pgstack_db.session() as session:
        post = (await session.scalars(select(Post).options(selectinload(Post.author)))).one()
        assert post.author.name == "Ursula"
    async with pgstack_db.session() as session:
        post = (await Repository(session, Post).list())[0]
        await session.refresh(post, ["author"])
        assert post.author.name == "Ursula"
    async with pgstack_db.session() as session:
        author = (await Repository(session, Author).list())[0]
        assert [p.title for p in await author.awaitable_attrs.posts] == ["Earthsea"]


async def test_a_relationship_already_in_the_session_needs_no_query(pgstack_db: Database) -> None:
    # proves: D1
    async with pgstack_db.session() as session:
        author = (await Repository(session, Author).list())[0]
        post = (await Repository(session, Post).list())[0]
        assert post.author is author  # found in the identity map, nothing to load


async def test_an_expired_column_names_the_fix(pgstack_db: Database) -> None:
    # proves: D1
    async with pgstack_db.session() as session:
        post = (await Repository(session, Post).list())[0]
        session.expire(post, ["title"])
        with pytest.raises(LazyLoadError, match=r"Post\.title is not loaded.*refresh\(obj"):
            _ = post.title
        await session.refresh(post, ["title"])
        assert post.title == "Earthsea"


async def test_models_outside_pgstack_keep_sqlalchemys_behaviour(pgstack_db: Database) -> None:
    # proves: D1
    async with pgstack_db.session() as session:
        author = (await session.scalars(select(PlainAuthor))).one()
        with pytest.raises(sa_exc.MissingGreenlet):
            _ = author.posts

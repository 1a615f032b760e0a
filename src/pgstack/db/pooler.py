"""Connecting through PgBouncer in transaction pooling mode (`DATABASE_POOLER`).

In transaction mode PgBouncer hands each transaction (and each statement outside one) to
whichever server connection is free, so nothing may outlive a transaction on the server side:

- no prepared statement is reused: asyncpg's statement cache and SQLAlchemy's are off, and the
  statements SQLAlchemy still prepares get names no other connection uses (PgBouncer 1.18, as
  in Debian 12, does not track protocol-level prepared statements);
- no session setting: PgBouncer refuses startup parameters other than a handful
  (`application_name` among them), so `statement_timeout` goes into each transaction with
  `set_config(..., true)`;
- advisory locks only transaction-scoped (`pg_advisory_xact_lock`; the migration lock too);
- no LISTEN.

With `DATABASE_POOLER=none` (the default) every function here returns its input unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from pgstack.config import Settings

TRANSACTION_POOLER = "pgbouncer-transaction"
# Startup parameters PgBouncer passes on to the server (all others are refused, unless its
# `ignore_startup_parameters` drops them silently, which would lose them).
_PASSED_ON = frozenset(
    {"application_name", "client_encoding", "datestyle", "timezone", "standard_conforming_strings"}
)


def transaction_pooled(settings: Settings) -> bool:
    """Whether connections go through a pooler that may switch server connection per transaction."""
    return settings.database_pooler == TRANSACTION_POOLER


def unique_statement_name() -> str:
    """A prepared statement name no other client of the same server connection will pick."""
    return f"__pgstack_{uuid.uuid4().hex}__"


def pooled_connect_args(settings: Settings, connect_args: dict[str, Any]) -> dict[str, Any]:
    """`connect_args` for the pooler mode: caches off, unique names, passable settings only.

    The settings PgBouncer would refuse at login are left out here; `transaction_settings`
    returns them, to be set in each transaction instead.
    """
    if not transaction_pooled(settings):
        return connect_args
    server_settings = connect_args.get("server_settings", {})
    return {
        **connect_args,
        "server_settings": {k: v for k, v in server_settings.items() if k in _PASSED_ON},
        # asyncpg's own cache (named statements reused across transactions) ...
        "statement_cache_size": 0,
        # ... and SQLAlchemy's, whose statements are prepared under names of their own.
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": unique_statement_name,
    }


def transaction_settings(settings: Settings, server_settings: dict[str, str]) -> dict[str, str]:
    """The `server_settings` that must be set in each transaction instead of at login."""
    if not transaction_pooled(settings):
        return {}
    return {k: v for k, v in server_settings.items() if k not in _PASSED_ON}


def set_in_each_transaction(engine: Engine, values: dict[str, str]) -> None:
    """Make every transaction of `engine` start with `set_config(name, value, true)` for each.

    One extra statement per transaction, and only where there is something to set.
    """
    if not values:
        return
    # Names and values come from validated settings (a number of milliseconds), never from a
    # request; they are still quoted as literals.
    sql = "SELECT " + ", ".join(
        f"set_config({_literal(name)}, {_literal(value)}, true)" for name, value in values.items()
    )

    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(sql)

    event.listen(engine, "begin", on_begin)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

"""Automatic entries: the row triggers a migration puts on an audited table.

    from pgstack.audit import disable_audit, enable_audit

    depends_on = "pgstack_0009_audit_speed"  # or a later pgstack revision

    def upgrade() -> None:
        op.create_table("invoices", ...)
        enable_audit(op, "invoices", secret=["card_token"])

    def downgrade() -> None:
        disable_audit(op, "invoices")
        op.drop_table("invoices")

AFTER INSERT, UPDATE and DELETE row triggers write one `audit_log` entry per row, in the
same transaction, whatever wrote it: the ORM, the repository's fast and bulk
paths (COPY, upserts), raw SQL or psql. An update that changes nothing but the ignored
columns writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from pgstack.errors import InvalidInputError

#: The pgstack revision that makes `pgstack_audit_row()`, which the triggers call.
AUDIT_REVISION = "pgstack_0009_audit_speed"

#: Columns left out of diffs by default: they move on every write and say nothing new.
IGNORED = ("updated_at", "updated_by", "version")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_EVENTS = ("insert", "update", "delete")


def _names(what: str, names: Iterable[str]) -> str:
    listed = list(names)
    for name in listed:
        if not _NAME.match(name):
            raise InvalidInputError(f"{what}: {name!r} is not a plain column name.")
    return ",".join(listed)


def audit_options(model: type[Any]) -> dict[str, tuple[str, ...]]:
    """`key` and `secret` for `enable_audit`, read from a model (primary key, `info["secret"]`)."""
    mapper = sa_inspect(model)
    table = mapper.local_table
    return {
        "key": tuple(c.name for c in table.primary_key.columns),
        "secret": tuple(c.name for c in table.columns if c.info.get("secret")),
    }


def audit_sql(
    table: str,
    *,
    key: Iterable[str] = ("id",),
    secret: Iterable[str] = (),
    ignore: Iterable[str] = IGNORED,
) -> list[str]:
    """The statements `enable_audit` runs, for a table in the current schema."""
    name = _quote(_names("table", [table]))
    keys = _names("key", key)
    if not keys:
        raise InvalidInputError("enable_audit needs the table's key columns.")
    args = ", ".join(
        f"'{value}'" for value in (keys, _names("secret", secret), _names("ignore", ignore))
    )
    statements: list[str] = []
    for event in _EVENTS:
        trigger = _quote(f"audit_{table}_{event}"[:63])
        statements.append(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
        statements.append(
            f"CREATE TRIGGER {trigger} AFTER {event.upper()} ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION pgstack_audit_row({args})"
        )
    return statements


def enable_audit(
    op: Any,
    table: str,
    *,
    key: Iterable[str] = ("id",),
    secret: Iterable[str] = (),
    ignore: Iterable[str] = IGNORED,
) -> None:
    """Audit every row written to `table`: one entry per inserted, updated or deleted row.

    `key` names the primary key columns (the entry's resource id); `secret` columns show in
    diffs only as "changed"; `ignore` columns are left out of diffs.

    The triggers call pgstack's `pgstack_audit_row()`, made by its migration
    `pgstack_0009_audit_speed`: the calling migration must come after it (`depends_on`).
    """
    statements = audit_sql(table, key=key, secret=secret, ignore=ignore)
    if not op.get_context().as_sql:  # offline (--sql) there is no database to ask
        found = op.get_bind().exec_driver_sql("SELECT to_regprocedure('pgstack_audit_row()')")
        if found.scalar() is None:
            raise InvalidInputError(
                f"enable_audit({table!r}) needs pgstack's audit functions, which its migration "
                f'{AUDIT_REVISION} makes: add depends_on = "{AUDIT_REVISION}" (or a later '
                "pgstack revision) to this migration."
            )
    for statement in statements:
        op.execute(text(statement))


def disable_audit(op: Any, table: str) -> None:
    """Undo `enable_audit`: drop the table's audit triggers (its entries stay)."""
    name = _quote(_names("table", [table]))
    for event in _EVENTS:
        trigger = _quote(f"audit_{table}_{event}"[:63])
        op.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON {name}"))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

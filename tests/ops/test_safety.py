"""Migration safety lint: each rule meets a migration that trips it and its safe version."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.migrations.safety import lint_sql, split_sql

MAPPED = {"users": {"id", "email", "nickname"}, "orders": {"id", "user_id", "total"}}

# rule id -> (unsafe SQL, its safe sequence)
CASES: dict[str, tuple[str, str]] = {
    "column.volatile-default": (
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE users ADD COLUMN token uuid;"
        "ALTER TABLE users ALTER COLUMN token SET DEFAULT gen_random_uuid();"
        "ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT now();",
    ),
    "column.not-null-without-default": (
        "ALTER TABLE users ADD COLUMN plan text NOT NULL;",
        "ALTER TABLE users ADD COLUMN plan text DEFAULT 'free' NOT NULL;",
    ),
    "column.set-not-null": (
        "ALTER TABLE users ALTER COLUMN nickname SET NOT NULL;",
        "ALTER TABLE users ADD CONSTRAINT users_nickname_nn CHECK (nickname IS NOT NULL) NOT VALID;"
        "ALTER TABLE users VALIDATE CONSTRAINT users_nickname_nn;"
        "ALTER TABLE users ALTER COLUMN nickname SET NOT NULL;"
        "ALTER TABLE users DROP CONSTRAINT users_nickname_nn;",
    ),
    "index.not-concurrent": (
        "CREATE INDEX ix_orders_total ON orders (total);",
        "COMMIT; CREATE INDEX CONCURRENTLY ix_orders_total ON orders (total); BEGIN;",
    ),
    "index.drop-not-concurrent": (
        "DROP INDEX ix_orders_total;",
        "COMMIT; DROP INDEX CONCURRENTLY ix_orders_total; BEGIN;",
    ),
    "index.concurrently-in-transaction": (
        "CREATE UNIQUE INDEX CONCURRENTLY ux_users_email ON users (email);",
        "COMMIT; CREATE UNIQUE INDEX CONCURRENTLY ux_users_email ON users (email); BEGIN;",
    ),
    "constraint.not-valid-missing": (
        "ALTER TABLE orders ADD CONSTRAINT fk_orders_user FOREIGN KEY(user_id) REFERENCES users;"
        "ALTER TABLE orders ADD CONSTRAINT ck_total CHECK (total >= 0);",
        "ALTER TABLE orders ADD CONSTRAINT fk_orders_user FOREIGN KEY(user_id) REFERENCES users"
        " NOT VALID; ALTER TABLE orders VALIDATE CONSTRAINT fk_orders_user;",
    ),
    "column.type-change": (
        "ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2);",
        "ALTER TABLE orders ADD COLUMN total_exact numeric(12, 2);",
    ),
    "rename": (
        'ALTER TABLE users RENAME nickname TO "displayName";',
        "ALTER TABLE users ADD COLUMN display_name text;",
    ),
    "column.drop-mapped": (
        "ALTER TABLE users DROP COLUMN nickname;",
        "ALTER TABLE users DROP COLUMN legacy_flag;",
    ),
    "table.drop-mapped": ("DROP TABLE orders;", "DROP TABLE old_orders;"),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_flags_the_unsafe_migration_not_its_safe_version(rule: str) -> None:
    # proves: O3
    unsafe, safe = CASES[rule]
    found = [f for f in lint_sql(unsafe, revision="r1", mapped=MAPPED) if f.id == rule]
    assert found, f"{rule} not flagged in {unsafe}"
    assert all(f.fix and f.why and f.evidence.startswith("revision r1: ") for f in found)
    assert [f.id for f in lint_sql(safe, mapped=MAPPED)] == []


def test_both_constraint_kinds_and_table_rename_are_named() -> None:
    # proves: O3
    findings = lint_sql(CASES["constraint.not-valid-missing"][0], mapped=MAPPED)
    assert ["FOREIGN KEY" in f.why for f in findings] == [True, False]
    assert "VALIDATE CONSTRAINT fk_orders_user" in findings[0].fix
    (renamed,) = lint_sql("ALTER TABLE orders RENAME TO purchases;", mapped=MAPPED)
    assert (renamed.id, renamed.object) == ("rename", "table orders")


def test_a_table_created_in_the_same_revision_is_left_alone() -> None:
    # proves: O3
    sql = (
        "CREATE TABLE invoices (id serial PRIMARY KEY, total numeric, user_id int);"
        "CREATE INDEX ix_invoices_total ON invoices (total);"
        "ALTER TABLE invoices ADD CONSTRAINT fk_inv_user FOREIGN KEY(user_id) REFERENCES users(id);"
        "ALTER TABLE invoices ALTER COLUMN total SET NOT NULL;"
        "ALTER TABLE invoices ADD COLUMN code uuid DEFAULT gen_random_uuid();"
    )
    assert lint_sql(sql, mapped=MAPPED) == []


def test_hostile_sql_does_not_confuse_the_reader() -> None:
    # proves: O3
    sql = (
        "-- CREATE INDEX in a comment; ALTER TABLE users DROP COLUMN email;\n"
        "/* DROP TABLE orders; */ INSERT INTO notes VALUES ('it''s; DROP TABLE orders', "
        "$body$ ALTER TABLE users RENAME TO x; $body$, E'\\x00\u202e');"
    )
    assert len(split_sql(sql)) == 1
    assert lint_sql(sql, mapped=MAPPED) == []
    assert lint_sql("", mapped=MAPPED) == [] and lint_sql(";;\x00;", mapped=MAPPED) == []


def test_a_revision_silences_a_rule_by_id() -> None:
    # proves: O3
    unsafe = CASES["index.not-concurrent"][0]
    assert lint_sql(unsafe, ignore=["index.not-concurrent"]) == []


def revision_file(imports: str, body: str) -> str:
    """A revision of the sample app after its first one, doing `body` in upgrade()."""
    return (
        f'"""changes to notes"""\nimport sqlalchemy as sa\nfrom alembic import op\n{imports}\n'
        'revision = "sampleapp_0002"\ndown_revision = "sampleapp_0001"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body}\n\ndef downgrade() -> None:\n    pass\n"
    )


UNSAFE_REVISION = revision_file(
    "",
    '    op.create_index("ix_sample_notes_title", "sample_notes", ["title"])\n'
    '    op.drop_column("sample_notes", "body")\n'
    '    op.alter_column("sample_notes", "title", new_column_name="heading")\n',
)
SAFE_REVISION = revision_file(
    "from pgstack.migrations.safety import create_index_concurrently, lock_timeout\n",
    "    lock_timeout(2000)\n"
    '    op.add_column("sample_notes", sa.Column("pinned", sa.Boolean(), server_default="f"))\n'
    '    create_index_concurrently("ix_sample_notes_title", "sample_notes", ["title"])\n',
)


@pytest.fixture
def app_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    source = Path(__file__).resolve().parents[1] / "fixtures" / "sampleapp"
    return Path(shutil.copytree(source, tmp_path / "sampleapp"))


@pytest.mark.parametrize(("revision", "exit_code"), [(UNSAFE_REVISION, 1), (SAFE_REVISION, 0)])
def test_db_check_safety_reads_the_pending_revisions(
    sample_url: URL, app_copy: Path, revision: str, exit_code: int
) -> None:
    # proves: O3
    (app_copy / "migrations" / "versions" / "sampleapp_0002_notes.py").write_text(revision)
    env = {"DATABASE_URL": sample_url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(
        app, ["db", "check", "--safety", "--project", str(app_copy)], env=env
    )
    assert result.exit_code == exit_code, result.output
    if exit_code == 0:
        assert "nothing found in the pending revisions" in result.output
        return
    # Only the pending revision is read (sampleapp_0001 and pgstack's are applied).
    flagged = [line.split()[1] for line in result.output.splitlines() if line[:1] in "we"]
    assert flagged == ["index.not-concurrent", "column.drop-mapped", "rename"]
    assert "revision sampleapp_0002: ALTER TABLE sample_notes DROP COLUMN body" in result.output

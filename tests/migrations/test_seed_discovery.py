"""`run_seeders` imports the project's seed modules itself, or says where it looked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import ConfigurationError
from pgstack.migrations import MigrationProject, run_seeders


def _project(root: Path, module: str, dataset: str) -> Path:
    """A pyproject naming `module` as its seeds; the seeder counts its runs in a table."""
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.pgstack]\nseeds = "{module}"\n'
    )
    (root / f"{module}.py").write_text(
        "from sqlalchemy import text\n"
        "from pgstack.migrations import seeder\n\n"
        f"@seeder({dataset!r})\n"
        "async def count(ctx):\n"
        f"    await ctx.session.execute(text('insert into {module} values (1)'))\n"
    )
    return root


async def test_run_seeders_imports_the_seed_modules_of_the_project_it_finds(
    pgstack_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: G6
    module = "seeds_found_d1"
    await pgstack_db.run(text(f"create table {module} (n int)"))
    try:
        monkeypatch.chdir(_project(tmp_path, module, "found-d1"))
        # No import_seeds() first: the nearest pyproject's `seeds` are imported.
        await run_seeders(pgstack_db, "found-d1")
        # An explicit project works from anywhere.
        monkeypatch.chdir("/")
        await run_seeders(pgstack_db, "found-d1", project=MigrationProject.from_pyproject(tmp_path))
        assert await pgstack_db.run(text(f"select count(*) from {module}")) == [(2,)]
    finally:
        await pgstack_db.run(text(f"drop table {module}"))


async def test_run_seeders_without_a_seeder_says_where_it_looked(
    pgstack_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: G6
    _project(tmp_path, "seeds_other_d2", "other-d2")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        await run_seeders(pgstack_db, "absent-d2")
    message = caught.value.message
    assert "'absent-d2'" in message
    assert str(tmp_path / "pyproject.toml") in message and "seeds_other_d2" in message
    # Without any [tool.pgstack], the message says that instead.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pyproject.toml").write_text('[project]\nname = "bare"\n')
    monkeypatch.chdir(bare)
    with pytest.raises(ConfigurationError) as caught:
        await run_seeders(pgstack_db, "absent-d2")
    assert "no [tool.pgstack] section" in caught.value.message

"""Where the migrations live: pgstack's own, and the application's from `[tool.pgstack]`."""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData

from pgstack.errors import ConfigurationError, MigrationError

PGSTACK_DIR = Path(__file__).resolve().parent
PGSTACK_VERSIONS = PGSTACK_DIR / "versions"
PGSTACK_BRANCH = "pgstack"
DEFAULT_APP_BRANCH = "app"

# pgstack's modules whose models have tables; each module that adds tables adds its line,
# so autogenerate and `pgstack db check` see every table pgstack's migrations create.
PGSTACK_MODEL_MODULES = (
    "pgstack.migrations.models",
    "pgstack.identity.models",
    "pgstack.tokens.models",
    "pgstack.tenancy.models",
    "pgstack.tenancy.ratelimit",
    "pgstack.conversations.models",
    "pgstack.analytics.models",
)


def pgstack_metadata() -> MetaData:
    """The metadata of pgstack's own tables (`pgstack.orm.Base.metadata`, models imported)."""
    for module in PGSTACK_MODEL_MODULES:
        importlib.import_module(module)
    from pgstack.orm import Base

    return Base.metadata


@dataclass(frozen=True)
class MigrationProject:
    """pgstack's migrations plus, optionally, an application's own on top of them.

    `versions` is the folder of the app's revision files, `models` a module (optionally
    `module:attribute`) whose import defines the app's models, `seeds` modules whose import
    registers seeders, `branch` the app's branch label, and `root` the folder paths and
    modules are relative to (the one holding `pyproject.toml`).
    """

    versions: Path | None = None
    models: str | None = None
    seeds: tuple[str, ...] = ()
    branch: str = DEFAULT_APP_BRANCH
    root: Path = field(default_factory=Path.cwd)
    configured: bool = False

    @classmethod
    def pgstack_only(cls) -> MigrationProject:
        """pgstack's built-in migrations alone."""
        return cls()

    @classmethod
    def from_pyproject(cls, path: Path | str) -> MigrationProject:
        """Read `[tool.pgstack]` of a `pyproject.toml` (a file or the folder holding one)."""
        path = Path(path)
        file = path / "pyproject.toml" if path.is_dir() else path
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(
                f"No pyproject.toml at {file}: pass --project the folder that holds the app's "
                "pyproject.toml, or run from inside it."
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{file} is not valid TOML: {exc}.") from None
        section = data.get("tool", {}).get("pgstack")
        root = file.resolve().parent
        if section is None:
            return cls(root=root)
        if not isinstance(section, dict):
            raise ConfigurationError(f"[tool.pgstack] in {file} must be a table.")
        unknown = set(section) - {"migrations", "models", "seeds", "branch"}
        if unknown:
            raise ConfigurationError(
                f"[tool.pgstack] in {file} has unknown key(s) {', '.join(sorted(unknown))}; "
                "pgstack reads migrations, models, seeds and branch."
            )
        return cls.build(
            root=root,
            migrations=_str(section, "migrations", file),
            models=_str(section, "models", file),
            seeds=_seeds(section.get("seeds"), file),
            branch=_str(section, "branch", file),
            configured=True,
        )

    @classmethod
    def discover(cls, start: Path | str | None = None) -> MigrationProject:
        """The project of the nearest `pyproject.toml` at or above `start` (default: cwd).

        Without one, or without a `[tool.pgstack]` section in it, pgstack's migrations alone.
        """
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "pyproject.toml").is_file():
                return cls.from_pyproject(folder)
        return cls(root=here)

    @classmethod
    def build(
        cls,
        *,
        root: Path | str | None = None,
        migrations: Path | str | None = None,
        models: str | None = None,
        seeds: Sequence[str] = (),
        branch: str | None = None,
        configured: bool = True,
    ) -> MigrationProject:
        """A project from explicit values, paths relative to `root` (default: cwd)."""
        base = Path(root or Path.cwd()).resolve()
        versions: Path | None = None
        if migrations is not None:
            folder = (base / migrations).resolve()
            if not folder.is_dir():
                raise ConfigurationError(
                    f"The migrations folder {folder} does not exist; create it or fix "
                    "`migrations` in [tool.pgstack] (or --migrations)."
                )
            # An Alembic-style folder keeps its revisions in versions/; a plain one holds them.
            versions = folder / "versions" if (folder / "versions").is_dir() else folder
        return cls(
            versions=versions,
            models=models,
            seeds=tuple(seeds),
            branch=branch or DEFAULT_APP_BRANCH,
            root=base,
            configured=configured,
        )

    # -- Alembic ------------------------------------------------------------------------------

    def alembic_config(self, **attributes: Any) -> Config:
        """An Alembic `Config` for these migrations (no ini file; nothing printed)."""
        config = Config(
            stdout=io.StringIO(),
            # quiet: Alembic's own "Generating ..." lines would mix into pgstack's output.
            cmd_opts=argparse.Namespace(quiet=True, x=None),
            attributes={"pgstack.project": self, **attributes},
        )
        config.set_main_option("script_location", str(PGSTACK_DIR))
        config.set_main_option("path_separator", "newline")
        locations = [str(PGSTACK_VERSIONS)]
        if self.versions is not None:
            locations.append(str(self.versions))
        config.set_main_option("version_locations", "\n".join(locations))
        return config

    def forget_scripts(self) -> None:
        """Read the revision files again next time (after one was written)."""
        self.__dict__.pop("script", None)

    @cached_property
    def script(self) -> ScriptDirectory:
        """The revisions of pgstack and the app, loaded once."""
        try:
            script = ScriptDirectory.from_config(self.alembic_config())
            script.revision_map.heads  # noqa: B018 - parse every revision file now
        except CommandError as exc:
            raise MigrationError(f"The migration scripts cannot be read: {exc}") from None
        return script

    # -- models and seeds ---------------------------------------------------------------------

    def metadata(self) -> list[MetaData]:
        """pgstack's metadata and the app's (when `models` is set), each once."""
        result = [pgstack_metadata()]
        if self.models:
            app = self._load_models()
            if all(app is not m for m in result):
                result.append(app)
        return result

    def import_seeds(self) -> None:
        """Import the seed modules, which register their seeders."""
        for module in self.seeds:
            self._import(module, "seeds")

    def _load_models(self) -> MetaData:
        assert self.models is not None
        module_name, _, attribute = self.models.partition(":")
        module = self._import(module_name, "models")
        if attribute:
            target = getattr(module, attribute, None)
            if target is None:
                raise ConfigurationError(f"{module_name} has no attribute {attribute!r}.")
        else:
            target = getattr(module, "metadata", None)
            if target is None:
                target = getattr(module, "Base", None)
        if target is None:
            # Models on pgstack's own base register themselves there on import.
            return pgstack_metadata()
        metadata = target if isinstance(target, MetaData) else getattr(target, "metadata", None)
        if not isinstance(metadata, MetaData):
            raise ConfigurationError(
                f"models = {self.models!r} names neither a MetaData nor a declarative base."
            )
        return metadata

    def _import(self, module: str, what: str) -> Any:
        root = str(self.root)
        if root not in sys.path:
            # The app's modules sit beside its pyproject.toml, as in `alembic`'s prepend_sys_path.
            sys.path.insert(0, root)
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"Cannot import the {what} module {module!r} (from {root}): {exc}. "
                f"Fix `{what}` in [tool.pgstack] (or --{what})."
            ) from None


def _str(section: dict[str, Any], key: str, file: Path) -> str | None:
    value = section.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"[tool.pgstack] {key} in {file} must be a string.")
    return value


def _seeds(value: Any, file: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigurationError(f"[tool.pgstack] seeds in {file} must be a module or a list of them.")

"""Alembic's environment for pgstack's and the application's migrations (see `_env`)."""

from pgstack.migrations._env import run

run()

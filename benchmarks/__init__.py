"""pgstack's benchmarks: W1-W8 against raw asyncpg, SQLAlchemy ORM and advanced-alchemy.

Run `uv run python -m benchmarks --help`; `docs/benchmarks.md` holds the latest table.
"""

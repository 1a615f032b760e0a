"""The `pgstack` command line."""

from pgstack.cli.main import app, main

__all__ = ["app", "main"]

"""pgstack's pytest plugin: a real PostgreSQL for every test run.

Enable it with `pytest_plugins = ["pgstack.testing.plugin"]` in your `conftest.py`.
"""

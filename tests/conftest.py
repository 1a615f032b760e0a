pytest_plugins = ["pgstack.testing.plugin"]

"""The test suite's name for `pgstack.testing.cluster` (primary and streaming replicas)."""

from pgstack.testing.cluster import Cluster, Server, _system_user, free_port, wait_until

__all__ = ["Cluster", "Server", "_system_user", "free_port", "wait_until"]

"""pg-node-agent: the agent beside Patroni on each PostgreSQL node."""

__version__ = "0.1.0"

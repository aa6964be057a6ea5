"""Hooks run on failover and failback, and sieve replication."""

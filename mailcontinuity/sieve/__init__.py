"""Sieve replication: users' filters and out-of-office replies follow them onto the standby."""

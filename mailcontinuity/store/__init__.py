"""The state store: what every mailcontinuity process shares and must agree on.

``db`` is the connection (and its migrations, in ``migrations``); each other module owns one
kind of record and its queries: the continuity ``state``, the ``audit`` trail, the ``journal``
index, health ``probes``, daemons' ``heartbeats``, the ``outages`` record, the merge ``leases``.
"""

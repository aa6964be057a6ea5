"""policyd: the policy server Postfix asks at RCPT time, and the health monitor that probes the
primary and fails inbound over to the standby and back (wire ``protocol``, ``server``,
``policy``, ``recipients``; ``probes``, the pure ``detector``, the ``loop``; ``daemon``)."""

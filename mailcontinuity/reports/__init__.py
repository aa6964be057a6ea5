"""What mailcontinuity tells people: ``status``, the Prometheus ``metrics``, the ``drill``."""

"""The local lab: private Postfix and Dovecot instances on loopback for demos and tests."""

from mailcontinuity.lab.lab import Lab, LabError

__all__ = ["Lab", "LabError"]

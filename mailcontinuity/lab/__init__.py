"""The local lab: private Postfix and Dovecot instances on 127.0.0.1, for trying mailcontinuity
out, for ``make demo`` and for the tests. A leaf: the product never imports it."""

from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.lab import Lab

__all__ = ["Lab", "LabError"]

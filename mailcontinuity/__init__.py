"""mailcontinuity: email continuity for Postfix/Dovecot shops."""

__version__ = "0.1.0"

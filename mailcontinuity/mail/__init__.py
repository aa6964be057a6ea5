"""The mail library: one module per protocol or store format, shared by every part.

Maildir (``maildir``), SMTP and LMTP (``smtp``), IMAP (``imap``), ManageSieve (``managesieve``),
TLS for all of them (``tls``), the headers mailcontinuity puts on mail (``headers``), and the
mail servers' own tools (``postfix``, ``doveadm``, run through ``tools``). Nothing here knows
about continuity states or outages.
"""

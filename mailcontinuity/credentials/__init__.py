"""Credential continuity: the standby's own copy of the directory's password hashes."""

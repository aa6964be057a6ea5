"""The journal milter: keeps a copy of every accepted message in the standby."""

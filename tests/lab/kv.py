"""A strict parser for the ``key=value`` log lines, as a log shipper would read them."""

from __future__ import annotations

import json
import re

# key=bare or key="JSON string"; pairs separated by single spaces, nothing else allowed.
_PAIR = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')


def parse_kv(line: str) -> dict[str, str]:
    """The fields of ``line``; ValueError if any part of it is not a key=value pair."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        if match is None:
            raise ValueError(f"not key=value at column {position}: {line[position:][:60]!r}")
        key, value = match.groups()
        if key in fields:
            raise ValueError(f"key {key!r} twice in {line!r}")
        fields[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    if not line or line.endswith(" "):
        raise ValueError(f"empty or trailing space: {line!r}")
    return fields

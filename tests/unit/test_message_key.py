"""The message key codec (mail/headers.py): what failback finds a message by on the primary.

Mail without the gateway's id header (drafts, sent copies written on the standby) is keyed by
Message-ID and a digest of header fields, never by its size: Exchange reports an estimated
RFC822.SIZE, so a key with the size would miss the copy failback appended and a re-run would
append it again. Outages recorded before migration 13 keep the sized keys they were recorded
with (``SIZED_KEYS``), computed exactly as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailcontinuity.mail.headers import (
    FIELD_KEYS,
    SIZED_KEYS,
    message_key,
    message_keys,
    parse_headers,
)
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.outage.primary import key_searches
from mailcontinuity.store.db import SQLiteStore
from mailcontinuity.store.outages import ChangeLog

# Header values as a client writes them: printable ASCII, single spaces, no CR/LF.
words = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='"'),
                min_size=1, max_size=12)
values = st.lists(words, max_size=4).map(" ".join)
message_ids = words.map(lambda text: f"<{text}@example.test>")
FIELDS = ("date", "from", "to", "cc", "subject")


@st.composite
def header_sets(draw: st.DrawFn, with_message_id: bool | None = None) -> dict[str, str]:
    has_id = draw(st.booleans()) if with_message_id is None else with_message_id
    headers = {name: draw(values) for name in FIELDS}
    headers |= {"id": "", "is_journal": "", "message-id": draw(message_ids) if has_id else ""}
    return headers


def old_message_key(headers: dict[str, str], size: int) -> str:
    """The key as the code before migration 13 computed it (the oracle for SIZED_KEYS)."""
    if headers.get("id"):
        return f"id:{headers['id']}"
    if headers.get("message-id"):
        return f"mid:{headers['message-id']}:{size}"
    digest = hashlib.sha256(
        "\n".join(headers.get(name, "") for name in ("date", "from", "subject")).encode()
    ).hexdigest()[:32]
    return f"hdr:{digest}:{size}"


@settings(max_examples=300)
@given(header_sets(), st.integers(0, 10**9))
def test_outages_recorded_before_the_change_keep_their_keys(
        headers: dict[str, str], size: int) -> None:
    assert message_key(headers, size, SIZED_KEYS) == old_message_key(headers, size)


@settings(max_examples=300)
@given(header_sets(), st.integers(0, 10**9), st.integers(0, 10**9))
def test_a_key_never_depends_on_the_size(headers: dict[str, str], exact: int,
                                         estimated: int) -> None:
    """The size the standby's file has and the size the primary estimates for its copy."""
    assert message_key(headers, exact) == message_key(headers, estimated)
    assert message_key(headers, exact, FIELD_KEYS) == message_key(headers, exact)


@settings(max_examples=300)
@given(header_sets(), st.sampled_from(FIELDS), values, st.integers(0, 10**6))
def test_another_version_of_a_message_has_another_key(
        headers: dict[str, str], field: str, other: str, size: int) -> None:
    """A draft saved again (a new Date) or sent (recipients, Date): same Message-ID, but not
    the same message, so failback never takes one for the other (a move instead of an
    append)."""
    changed = {**headers, field: other}
    assert (message_key(changed, size) == message_key(headers, size)) == (other == headers[field])


@settings(max_examples=200)
@given(header_sets(), st.booleans(), st.integers(1, 3))
def test_the_key_survives_folding_and_round_trips_through_a_header_block(
        headers: dict[str, str], crlf: bool, fold_at: int) -> None:
    """What the primary's FETCH BODY.PEEK[HEADER.FIELDS] returns (CRLF, maybe folded) keys
    the same as the standby's file (LF)."""
    names = {"date": "Date", "from": "From", "to": "To", "cc": "Cc", "subject": "Subject",
             "message-id": "Message-ID"}
    end = "\r\n" if crlf else "\n"
    lines = []
    for name, header in names.items():
        if not headers[name]:
            continue
        parts = headers[name].split(" ")
        folded = " ".join(parts[:fold_at]) + "".join(f"{end}\t{part}" for part in parts[fold_at:])
        lines.append(f"{header}: {folded}{end}")
    parsed = parse_headers("".join(lines).encode() + end.encode(), "X-Mailcontinuity-Id")
    assert message_key(parsed, 1) == message_key(headers, 2)


@settings(max_examples=200)
@given(header_sets(with_message_id=True), st.integers(0, 10**6))
def test_key_searches_look_for_the_message_id_in_either_scheme(
        headers: dict[str, str], size: int) -> None:
    for scheme in (FIELD_KEYS, SIZED_KEYS):
        searches = key_searches([message_key(headers, size, scheme)], "X-Mailcontinuity-Id")
        assert searches == [["HEADER", "Message-ID", headers["message-id"]]]


@given(header_sets(), st.integers(0, 10**6), st.text(min_size=1, max_size=20))
def test_every_scheme_keys_mail_with_the_id_header_by_it(
        headers: dict[str, str], size: int, gateway_id: str) -> None:
    headers = {**headers, "id": gateway_id}
    assert message_keys(headers, size) == (f"id:{gateway_id}",)
    assert message_key(headers, size, SIZED_KEYS) == message_key(headers, size)


def test_eight_bit_header_bytes_make_a_key() -> None:
    parsed = parse_headers("Subject: Entwürfe\nMessage-ID: <a@b>\n\n".encode(), "X-Id")
    assert message_key(parsed, 10).startswith("msg:<a@b>:")
    assert message_key({**parsed, "message-id": ""}, 10).startswith("fld:")


def _file(headers: dict[str, str], size: int, scheme: int, name: str) -> MessageFile:
    return MessageFile(folder="Sent", basename=name, filename=name, path=Path("/x") / name,
                       flags=(), key=message_key(headers, size, scheme), journal=False,
                       size=size, mtime=1.0, message_id=headers["message-id"],
                       keys=message_keys(headers, size))


def test_outages_keep_the_scheme_they_were_opened_with(tmp_path: Path) -> None:
    """An outage opened before migration 13 (the column's default) stays SIZED_KEYS; one
    opened now is FIELD_KEYS; a sent copy merged in the old outage is history in the new one
    (``kind_of`` looks for it under every scheme's key)."""
    store = SQLiteStore(tmp_path / "state.db")
    log = ChangeLog(store)
    store.execute("INSERT INTO sync_outage (started_at, status) VALUES (1.0, 'merged')")
    old = log.last_outage()
    assert old is not None and old.key_scheme == SIZED_KEYS
    headers = {"id": "", "is_journal": "", "message-id": "<s@x>", "date": "d", "from": "f",
               "to": "t", "cc": "", "subject": "s"}
    log.upsert_file(old.id, "alice@example.test", _file(headers, 100, SIZED_KEYS, "a"), False)
    new = log.start_outage()
    assert new is not None and new.key_scheme == FIELD_KEYS
    again = _file(headers, 100, FIELD_KEYS, "a")
    assert log.kind_of(new.id, "alice@example.test", again) == "existing"
    other = _file({**headers, "message-id": "<t@x>"}, 100, FIELD_KEYS, "b")
    assert log.kind_of(new.id, "alice@example.test", other) == "outage"
    store.close()

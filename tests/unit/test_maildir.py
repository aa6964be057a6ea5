"""The Maildir library's codecs, round trip: folder names, path templates, file names, headers."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from mailcontinuity.mail.headers import key_headers, message_key, parse_headers
from mailcontinuity.mail.maildir import (
    FLAG_LETTERS,
    INBOX,
    MaildirError,
    MailOwner,
    deliver,
    ensure_folder,
    expand_template,
    flags_of,
    folder_dirname,
    folder_name,
    folder_path,
    message_name,
    read_header_fields,
    rfc822_size,
    split_filename,
    user_maildirs,
)

# A folder name part as Dovecot's Maildir++ layout allows it: no separator of either kind.
part = st.text(st.characters(blacklist_characters="./\x00\r\n", blacklist_categories=("Cs",)),
               min_size=1, max_size=12)
folders = st.lists(part, min_size=1, max_size=3).map("/".join).filter(
    lambda name: name.upper() != INBOX)
local_parts = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True).filter(
    lambda local: not local.endswith("."))
domains = st.sampled_from(["example.test", "mail.example.org"])


@given(folders)
def test_folder_names_round_trip(folder: str) -> None:
    dirname = folder_dirname(folder)
    assert dirname.startswith(".") and dirname.isascii() and "/" not in dirname
    assert folder_name(dirname) == folder


def test_inbox_is_the_root_in_any_case() -> None:
    assert folder_dirname("inbox") == folder_dirname(INBOX) == ""
    assert folder_name("") == INBOX
    assert folder_path(Path("/m"), "Inbox") == Path("/m")
    assert folder_path(Path("/m"), "Archive/Résumé") == Path("/m/.Archive.R&AOk-sum&AOk-")


@given(local_parts, domains, st.sampled_from([
    "/var/vmail/%d/%n/Maildir", "/srv/mail/%u", "/home/%d/%n", "/v/%d/users/%n.box/Maildir",
    "/v/100%%/%d/%n"]))
def test_templates_expand_as_dovecot_does(local: str, domain: str, template: str) -> None:
    address = f"{local}@{domain}"
    expanded = str(expand_template(template, address))
    assert "%" not in expanded.replace("100%", "")
    assert (local in expanded) and (domain in expanded or "%u" not in template)


@settings(max_examples=50, deadline=None)
@given(st.lists(local_parts, min_size=1, max_size=5, unique=True), domains,
       st.sampled_from(["%d/%n/Maildir", "%u", "%d/%n.box/Maildir", "100%%/%d/%n"]))
def test_every_maildir_a_template_makes_is_found_again(locals_: list[str], domain: str,
                                                      template: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        full = f"{root}/{template}"
        for local in locals_:
            (expand_template(full, f"{local}@{domain}") / "cur").mkdir(parents=True)
        # Not a Maildir, and a name the template cannot have made: both ignored.
        (expand_template(full, f"stray@{domain}").parent / "not-a-maildir").mkdir(
            parents=True, exist_ok=True)
        found = user_maildirs(full, [domain, "other.test"])
        assert found == {f"{local}@{domain}": expand_template(full, f"{local}@{domain}")
                         for local in locals_}


def test_a_template_without_the_user_or_with_an_unknown_variable_is_refused() -> None:
    with pytest.raises(MaildirError, match="does not name the user"):
        user_maildirs("/var/vmail/%d/Maildir", ["example.test"])
    with pytest.raises(MaildirError, match="unknown variable %h"):
        expand_template("/home/%h/Maildir", "a@example.test")


@given(st.sets(st.sampled_from(sorted(FLAG_LETTERS))), st.sets(st.sampled_from("abcdef")),
       st.integers(1, 10**9), st.integers(0, 10**6))
def test_file_names_carry_sizes_and_flags(letters: set[str], keyword_letters: set[str],
                                          size: int, extra: int) -> None:
    keywords = {letter: f"$Keyword{letter}" for letter in "abcdef"}
    base = message_name("1795325361.M1P2Q3", size, size + extra)
    info = "".join(sorted(letters | keyword_letters))
    assert split_filename(f"{base}:2,{info}") == (base, info)
    assert split_filename(base) == (base, "")
    assert rfc822_size(Path("/nonexistent"), f"{base}:2,{info}") == size + extra
    expected = {FLAG_LETTERS[c] for c in letters} | {keywords[c] for c in keyword_letters}
    assert flags_of(info, keywords) == tuple(sorted(expected))


def test_rfc822_size_counts_bare_line_feeds_when_the_name_does_not_say(tmp_path: Path) -> None:
    stored = tmp_path / "1.M1P1.host"
    stored.write_bytes(b"Subject: x\n\nline\r\nline\n")
    assert rfc822_size(stored, stored.name) == len(stored.read_bytes()) + 3  # 3 bare LFs


header_lines = st.lists(
    st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)),
    min_size=1, max_size=40)


@given(header_lines, st.sampled_from([b"\n", b"\r\n"]), st.binary(max_size=2000),
       st.sets(st.integers(0, 39)))
def test_the_wanted_fields_are_read_up_to_the_first_empty_line(
        lines: list[tuple[str, str]], eol: bytes, body: bytes, picks: set[int]) -> None:
    """Exactly the lines of the wanted fields (folded lines too), in order; nothing of the
    body, whatever it holds."""
    wanted = {lines[n][0].lower() for n in picks if n < len(lines)}
    fields = [f"{name}: {value}".encode() + eol + (b"\tfolded" + eol if n % 2 else b"")
              for n, (name, value) in enumerate(lines)]
    headers = b"".join(fields)
    assume(eol + eol not in headers)
    with tempfile.NamedTemporaryFile() as stored:
        stored.write(headers + eol + body)
        stored.flush()
        found = read_header_fields(Path(stored.name), wanted)
    expected = b"".join(field for field, (name, _) in zip(fields, lines, strict=True)
                        if name.lower() in wanted)
    assert found == expected + b"\n"


def test_the_id_is_found_after_a_header_block_of_megabytes(tmp_path: Path) -> None:
    """The key of a message whose header section is far larger than any fixed read: the id
    header after 3 MB of other fields (as the milter's id once ended up), and before them."""
    bulk = b"".join(b"X-Filler-%05d: " % n + b"x" * 990 + b"\n" for n in range(3000))
    for name, text in (("after", bulk + b"X-Corp-Id: gw-123\n"),
                       ("before", b"X-Corp-Id: gw-123\n" + bulk)):
        path = tmp_path / name
        path.write_bytes(b"Message-ID: <m@x>\nSubject: big\n" + text + b"\nbody\n")
        headers = parse_headers(read_header_fields(path, key_headers("X-Corp-Id")), "X-Corp-Id")
        assert headers["id"] == "gw-123" and headers["subject"] == "big"
        assert message_key(headers, 1) == "id:gw-123"



@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EOPNOTSUPP])
def test_delivery_copies_between_file_systems(tmp_path: Path, mocker: MockerFixture,
                                              refusal: int) -> None:
    """copy_file_range refuses a copy from a spool on another file system (EXDEV); the copy
    goes on with sendfile from where it stopped, byte for byte."""
    data = bytes(range(256)) * 9000  # over two COPY_CHUNKs
    source = tmp_path / "spool-entry"
    source.write_bytes(b"HEAD" + data + b"TRAILER")  # a record in a segment: data at offset 4
    real = os.copy_file_range
    calls = []

    def refuse_after_one_chunk(*args: int) -> int:
        calls.append(args)
        if len(calls) > 1:
            raise OSError(refusal, os.strerror(refusal))
        return real(*args)

    mocker.patch("os.copy_file_range", side_effect=refuse_after_one_chunk)
    owner = MailOwner(os.getuid(), os.getgid())
    fd = os.open(source, os.O_RDONLY)
    try:
        ensure_folder(tmp_path / "Maildir", owner)
        stored = deliver(tmp_path / "Maildir", "1.M1P1.host,S=1,W=1", fd, len(data), owner,
                         1e9, start=4)
    finally:
        os.close(fd)
    assert stored.read_bytes() == data and stored.stat().st_mtime == 1e9
    assert len(calls) == 2 and list((tmp_path / "Maildir" / "tmp").iterdir()) == []


def test_a_short_source_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "short"
    source.write_bytes(b"12345")
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(MaildirError, match="source ended after 5 of 10 bytes"):
            owner = MailOwner(os.getuid(), os.getgid())
            ensure_folder(tmp_path / "Maildir", owner)
            deliver(tmp_path / "Maildir", "x", fd, 10, owner, 0.0)
    finally:
        os.close(fd)
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    assert list((tmp_path / "Maildir" / "new").iterdir()) == []


@pytest.mark.parametrize("in_kernel", [True, False])
def test_delivery_writes_a_copys_own_fields_in_after_the_stamp(
        tmp_path: Path, mocker: MockerFixture, in_kernel: bool) -> None:
    """A journal copy's own trace fields (Return-Path, Delivered-To) go in after the first
    bytes (the stamp), by copy_file_range or, between file systems, by sendfile."""
    data = bytes(range(256)) * 9000
    source = tmp_path / "spool-entry"
    source.write_bytes(b"HEAD." + data + b"TRAILER")  # at an offset, as in a segment
    if not in_kernel:
        mocker.patch("os.copy_file_range", side_effect=OSError(errno.EXDEV, "cross-device"))
    prefix = b"Return-Path: <s@r.test>\r\nDelivered-To: a@x.test\r\n"
    owner = MailOwner(os.getuid(), os.getgid())
    ensure_folder(tmp_path / "Maildir", owner)
    fd = os.open(source, os.O_RDONLY)
    try:
        stored = deliver(tmp_path / "Maildir", "1.M1P1.host", fd, len(data), owner, 1e9, prefix,
                         70000, start=5)
    finally:
        os.close(fd)
    assert stored.read_bytes() == data[:70000] + prefix + data[70000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating files for another user needs root")
def test_a_new_folder_is_the_mail_owners_from_its_first_moment(mocker: MockerFixture) -> None:
    """Run as root (the lab's milter), every directory and the marker ensure_folder makes is
    the mail owner's when it appears: nothing is created as root and given away afterwards
    (Dovecot reaching a root-owned 0700 directory answers SELECT with [SERVERBUG]). Under a
    parent the owner may not write, it is created, then given away."""
    owner = MailOwner.parse("mail")
    base = Path(tempfile.mkdtemp(prefix="mc-owner-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "mail").mkdir()
        os.chown(base / "mail", owner.uid, owner.gid)
        chown = mocker.spy(os, "chown")
        folder = base / "mail" / "example.test" / "alice" / "Maildir" / ".Sent"
        ensure_folder(folder, owner)
        made = [base / "mail" / "example.test", *folder.parents[:3][::-1], folder,
                *(folder / sub for sub in ("tmp", "new", "cur", "maildirfolder"))]
        assert chown.call_count == 0
        for path in made:
            status = path.stat()
            assert (status.st_uid, status.st_gid) == (owner.uid, owner.gid), path
            assert status.st_mode & 0o777 == (0o600 if path.name == "maildirfolder" else 0o700)
        (base / "probe").touch()
        assert (base / "probe").stat().st_uid == 0  # the identity is root's again after

        ensure_folder(base / "root-owned" / "Maildir", owner)  # base is root's, 0755
        for path in (base / "root-owned", base / "root-owned" / "Maildir" / "new"):
            assert (path.stat().st_uid, path.stat().st_gid) == (owner.uid, owner.gid), path
    finally:
        shutil.rmtree(base)

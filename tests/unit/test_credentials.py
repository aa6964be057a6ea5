"""The standby's copy of the directory's hashes: hash names, lines, the atomic writer, and the
Dovecot settings rendered from ``[credentials]`` (no servers)."""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import stat
import tomllib
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from mailcontinuity.config import Config, ConfigError, parse_config
from mailcontinuity.credentials.continuity import ssha512
from mailcontinuity.credentials.copy import (
    Account,
    dovecot_hash,
    passwd_file_text,
    read_logins,
    write_copy,
)
from mailcontinuity.deploy.credentials import (
    dovecot_credentials_passdb,
    dovecot_ldap_args,
    user_filter,
)
from tests.unit.test_config import VALID

BASE = VALID + """
[credentials]
directory = "ldap.example.org:389"
bind_dn = "cn=mailcontinuity,ou=services,dc=example,dc=org"
base = "ou=people,dc=example,dc=org"
copy_file = "/var/lib/mailcontinuity/credentials/passwd"
"""


def config(extra: str = "") -> Config:
    return parse_config(tomllib.loads(BASE + extra), Path("/etc/mc.toml"))


@pytest.mark.parametrize(("value", "expected"), [
    (b"{SSHA}m6MFKcgQ5DwO4H2MZNNDVPGIxBRJY0Hd", "{SSHA}m6MFKcgQ5DwO4H2MZNNDVPGIxBRJY0Hd"),
    ("{crypt}$6$salt$hash", "{CRYPT}$6$salt$hash"),
    ("{SSHA512}abc", "{SSHA512}abc"),
    ("{ARGON2}$argon2id$v=19$m=65536,t=2,p=1$x$y", "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$x$y"),
    ("{ARGON2}$argon2i$v=19$x$y", "{ARGON2I}$argon2i$v=19$x$y"),
    ("secret", None),  # clear text: never copied
    ("{PLAIN}secret", None),
    ("{SASL}user@realm", None),
    ("{SSHA}", None),
    (b"\xff\xfe", None),
])
def test_directory_values_become_dovecot_hashes_or_nothing(value: bytes | str,
                                                           expected: str | None) -> None:
    assert dovecot_hash(value) == expected


def test_lines_are_sorted_and_refuse_what_a_passwd_file_cannot_hold() -> None:
    text = passwd_file_text([Account("bob@x.org", "{SSHA}b"), Account("alice@x.org", "{SSHA}a")])
    assert text == "alice@x.org:{SSHA}a::::::\nbob@x.org:{SSHA}b::::::\n"
    with pytest.raises(ValueError, match="cannot go into a passwd-file"):
        passwd_file_text([Account("eve@x.org", "{SSHA}a\nroot:{PLAIN}x")])
    with pytest.raises(ValueError):
        passwd_file_text([Account("eve:x@x.org", "{SSHA}a")])


def test_an_account_never_shows_its_hash() -> None:
    assert "{SSHA}" not in repr(Account("alice@x.org", "{SSHA}secret"))


def test_copy_is_0640_root_dovecot_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "passwd"
    write_copy(path, passwd_file_text([Account("alice@x.org", "{SSHA}a"),
                                       Account("carol@x.org", "{SSHA}c")]), "dovecot")
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == grp.getgrnam("dovecot").gr_gid
    if os.geteuid() == 0:
        assert info.st_uid == 0
    assert read_logins(path) == ["alice@x.org", "carol@x.org"]
    # carol removed (or locked) in the directory: gone from the next copy
    write_copy(path, passwd_file_text([Account("alice@x.org", "{SSHA}a")]), "dovecot")
    assert read_logins(path) == ["alice@x.org"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["passwd"]


def test_a_failed_write_keeps_the_old_copy_and_leaves_no_temporary(
        tmp_path: Path, mocker: MockerFixture) -> None:
    path = tmp_path / "passwd"
    write_copy(path, "alice@x.org:{SSHA}a::::::\n", "dovecot")
    before = path.read_text()
    mocker.patch("mailcontinuity.credentials.copy.os.replace",
                 side_effect=OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space"):
        write_copy(path, "bob@x.org:{SSHA}b::::::\n", "dovecot")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]


def test_the_temporary_file_is_never_readable_by_others(tmp_path: Path,
                                                        mocker: MockerFixture) -> None:
    """The secret is written only after the mode is set: a reader racing the writer finds a
    file it cannot open."""
    seen: list[int] = []
    real_replace = os.replace

    def spy(source: str, target: Path) -> None:
        seen.append(stat.S_IMODE(os.stat(source).st_mode))
        real_replace(source, target)

    mocker.patch("mailcontinuity.credentials.copy.os.replace", side_effect=spy)
    write_copy(tmp_path / "passwd", "alice@x.org:{SSHA}a::::::\n", "dovecot")
    assert seen == [0o640]


def test_an_unknown_group_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials.copy_group"):
        write_copy(tmp_path / "passwd", "", "no-such-group-here")
    assert list(tmp_path.iterdir()) == []


def test_dovecot_asks_the_directory_first_and_the_copy_only_when_it_cannot_answer() -> None:
    passdb = dovecot_credentials_passdb(config(), Path("/etc/dovecot/ldap.conf.ext"))
    ldap, copy = passdb.split("}\npassdb {")
    assert "driver = ldap" in ldap and "result_internalfail = continue" in ldap
    assert "result_failure = return-fail" in ldap
    assert "driver = passwd-file" in copy
    assert "/var/lib/mailcontinuity/credentials/passwd" in copy


def test_the_same_filter_selects_copied_and_accepted_users_without_locked_ones() -> None:
    section = config('filter = "(&(objectClass=inetOrgPerson)(memberOf=cn=mail%,dc=x))"\n'
                     ).credentials
    assert user_filter(section) == ("(&(&(objectClass=inetOrgPerson)(memberOf=cn=mail%,dc=x))"
                                    "(!(pwdAccountLockedTime=*)))")
    args = dovecot_ldap_args(config('filter = "(&(objectClass=inetOrgPerson)(o=100%))"\n'),
                             "s3cret")
    assert "pass_filter = (&(&(objectClass=inetOrgPerson)(o=100%%))(mail=%u)" \
           "(!(pwdAccountLockedTime=*)))\n" in args
    assert "dnpass = s3cret\n" in args
    assert "tls = yes\n" in args and "tls_require_cert = demand\n" in args
    assert "uris = ldap://ldap.example.org:389\n" in args
    ldaps = dovecot_ldap_args(config('tls = "ssl"\nlock_attribute = false\n'))
    assert "uris = ldaps://ldap.example.org:389\n" in ldaps and "\ntls = yes" not in ldaps
    assert "pwdAccountLockedTime" not in ldaps
    assert "<contents of credentials.bind_password_file>" in ldaps


@pytest.mark.parametrize(("extra", "message"), [
    ("refresh_seconds = 3600\nmax_age_seconds = 600\n", "refresh_seconds must be below"),
    ('filter = "objectClass=person"\n', "credentials.filter"),
    ('lock_attribute = "bad attr"\n', "credentials.lock_attribute"),
])
def test_credentials_mistakes_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(extra)


def test_bind_mode_lets_the_directory_check_and_copies_continuity_passwords() -> None:
    args = dovecot_ldap_args(config('directory_login = "bind"\n'
                                    'password_attribute = "extensionAttribute10"\n'))
    assert "auth_bind = yes\n" in args
    assert "pass_attrs = mail=user\n" in args and "extensionAttribute10" not in args
    with pytest.raises(ConfigError, match="never the directory's own password"):
        config('directory_login = "bind"\n')


def test_continuity_hash_is_salted_sha512_dovecot_reads() -> None:
    first, second = ssha512("a long continuity"), ssha512("a long continuity")
    assert first.startswith("{SSHA512}") and first != second
    raw = base64.b64decode(first.removeprefix("{SSHA512}"))
    digest, salt = raw[:64], raw[64:]
    assert hashlib.sha512(b"a long continuity" + salt).digest() == digest
    assert dovecot_hash(first) == first


def test_copy_first_asks_the_directory_only_for_what_the_copy_does_not_accept() -> None:
    passdb = dovecot_credentials_passdb(config('check_first = "copy"\n'),
                                        Path("/etc/dovecot/ldap.conf.ext"))
    copy, ldap = passdb.split("}\npassdb {")
    assert "driver = passwd-file" in copy and "result_success = return-ok" in copy
    assert "result_failure = continue" in copy and "result_internalfail = continue" in copy
    assert "driver = ldap" in ldap

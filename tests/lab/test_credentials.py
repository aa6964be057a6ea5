"""Issue 18, credential continuity: the users live in a real slapd (``lab up --directory ldap``)
that both Dovecots ask; the standby keeps a copy of the hashes (``credentials-sync``) and uses it
when the directory is away.

One lab for the module, with its directory; tests that stop parts start them again.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient.exceptions import IMAPClientError, LoginError

from mailcontinuity.credentials.copy import read_logins
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.mailbox import timed_login
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.db import open_store
from tests.lab.backends import LAB_BACKENDS


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.temporary(prefix="mclab-cred-", directory_kind="ldap") as lab:
        yield lab


@pytest.fixture(scope="module", params=LAB_BACKENDS)
def store_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The module's lab, and the same with a PostgreSQL store: for the tests that read the
    refresh's outcome back from the store (status, drill). The logins themselves read no store
    (Dovecot asks the directory or the copy): those tests run on the SQLite lab only."""
    if request.param == "sqlite":
        yield request.getfixturevalue("lab")
        return
    with Lab.temporary(prefix="mclab-cred-pg-", directory_kind="ldap",
                       state="postgresql") as lab:
        yield lab


def cli(lab: Lab, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailcontinuity", "--config",
                           str(config or lab.config_file), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def logs_in(lab: Lab, role: str, user: LabUser) -> bool:
    """A user's own IMAP login, STARTTLS verified as their client would."""
    try:
        with imap_login(lab.endpoint(role, "imap"), user.login, user.password,
                        lab.tls("standby")) as client:
            client.noop()
        return True
    except (LoginError, IMAPClientError):
        return False


def copy_file(lab: Lab) -> Path:
    assert lab.config.credentials is not None
    return lab.config.credentials.copy_file


def status(lab: Lab) -> dict[str, object]:
    store = open_store(lab.config)
    try:
        return collect_status(lab.config, store, live=False)
    finally:
        store.close()


def credentials_problems(lab: Lab) -> list[dict[str, str]]:
    report = status(lab)
    return [p for p in report["problems"] if p["part"] == "credentials"]  # type: ignore[attr-defined]


def test_lab_directory_contract(lab: Lab) -> None:
    """``lab up --directory ldap``: part ``directory``; every lab user logs in with their
    ``lab.json`` password on both sides, checked by the directory; the copy holds them all."""
    description = json.loads((lab.dir / "lab.json").read_text())
    assert description["directory"]["kind"] == "ldap"
    assert "directory" in lab.parts and lab.running()["directory"]
    for user in lab.users:
        assert logs_in(lab, "primary", user), user.login
        assert logs_in(lab, "standby", user), user.login
    assert sorted(read_logins(copy_file(lab))) == sorted(u.login for u in lab.users)
    assert (lab.dir / "directory" / "slapd.log").read_text().count("STARTTLS") >= 1
    # Dovecot and credentials-sync read the hashes as the service account, over TLS; the users'
    # lab.json passwords are in no file of the directory nor in the copy (hashes only).
    stored = [copy_file(lab), lab.dir / "primary" / "users", lab.dir / "standby" / "users"]
    for user in lab.users:
        assert not any(user.password in path.read_text() for path in stored), user.login
    stopped = cli(lab, "lab", "stop", "directory", "--dir", str(lab.dir))
    assert stopped.returncode == 0, stopped.stderr
    assert not lab.running()["directory"]
    started = cli(lab, "lab", "start", "directory", "--dir", str(lab.dir))
    assert started.returncode == 0, started.stderr
    assert lab.running()["directory"]


def test_directory_and_primary_down_every_user_logs_in_to_the_standby(lab: Lab) -> None:
    """The outage of the whole site: the directory and the primary stop together. Every user
    logs in to the standby's IMAP with their existing password; a user locked in the directory
    before the outage, and one removed from it, cannot."""
    _, bob, carol = lab.users[:3]
    assert lab.directory is not None
    dave = LabUser("dave@example.test", "pdave" + os.urandom(6).hex())
    lab.directory.add(dave)
    refreshed = cli(lab, "credentials-sync", "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "dave@example.test" in json.loads(refreshed.stdout)["added"]
    # carol is locked, dave leaves the organisation: the directory refuses them at once, even
    # though the copy still lists them (the directory answers, so it decides) ...
    lab.directory.lock(carol.login)
    lab.directory.remove(dave.login)
    assert dave.login in read_logins(copy_file(lab)) and carol.login in read_logins(
        copy_file(lab))
    assert not logs_in(lab, "standby", carol)
    assert not logs_in(lab, "standby", dave)
    # ... and the next refresh removes them from the copy.
    refreshed = cli(lab, "credentials-sync", "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    report = json.loads(refreshed.stdout)
    assert sorted(report["removed"]) == sorted([carol.login, dave.login])
    assert {"login": carol.login, "reason": "locked"} in report["skipped"]
    logins = read_logins(copy_file(lab))
    assert carol.login not in logins and dave.login not in logins
    try:
        lab.part("directory").stop()
        lab.part("primary").stop()
        others = [u for u in lab.users if u.login != carol.login]
        assert all(logs_in(lab, "standby", user) for user in others), others
        assert not logs_in(lab, "standby", carol)
        assert not logs_in(lab, "standby", dave)
        # a wrong password is still refused from the copy
        assert not logs_in(lab, "standby", LabUser(bob.login, bob.password + "x"))
    finally:
        lab.part("directory").start()
        lab.part("primary").start()
        lab.directory.unlock(carol.login)
        assert cli(lab, "credentials-sync").returncode == 0
    assert logs_in(lab, "standby", carol)


def test_refresh_with_the_directory_down_keeps_the_last_copy_and_says_so(store_lab: Lab) -> None:
    lab = store_lab
    assert cli(lab, "credentials-sync").returncode == 0
    path = copy_file(lab)
    before, written = path.read_bytes(), path.stat().st_mtime
    assert credentials_problems(lab) == []
    lab.part("directory").stop()
    try:
        failed = cli(lab, "credentials-sync")
        assert failed.returncode == 1
        assert "cannot read the directory" in failed.stderr
        assert f"({len(lab.users)} users) is kept" in failed.stderr
        assert path.read_bytes() == before and path.stat().st_mtime == written
        problems = credentials_problems(lab)
        assert len(problems) == 1 and "last refresh failed" in problems[0]["detail"]
        report = status(lab)
        assert report["credentials"]["last_refresh_ok"] is False  # type: ignore[index]
        # the users still log in to the standby from the kept copy
        assert logs_in(lab, "standby", lab.users[1])
    finally:
        lab.part("directory").start()
    assert cli(lab, "credentials-sync").returncode == 0
    assert credentials_problems(lab) == []


def test_an_old_copy_is_a_problem_and_fails_the_drill(store_lab: Lab) -> None:
    lab = store_lab
    assert cli(lab, "credentials-sync").returncode == 0
    assert lab.config.credentials is not None
    old = time.time() - lab.config.credentials.max_age_seconds - 60
    os.utime(copy_file(lab), (old, old))
    try:
        problems = credentials_problems(lab)
        assert len(problems) == 1 and "credentials.max_age_seconds" in problems[0]["detail"]
        checked = cli(lab, "status", "--check")
        assert checked.returncode == 2 and "credentials" in checked.stdout
        drill = cli(lab, "drill", "--json")
        steps = {s["name"]: s for s in json.loads(drill.stdout)["steps"]}
        step = steps["credentials copy on the standby"]
        assert not step["passed"] and "old" in step["detail"]
    finally:
        assert cli(lab, "credentials-sync").returncode == 0
    drill = cli(lab, "drill", "--json")
    steps = {s["name"]: s for s in json.loads(drill.stdout)["steps"]}
    assert steps["credentials copy on the standby"]["passed"], steps


def test_refresh_refuses_a_directory_it_cannot_verify(lab: Lab, tmp_path: Path) -> None:
    """TLS verified like every other hop: another CA's certificate is refused before the bind
    password is sent, and the copy is kept."""
    other_ca = LabCertificates(tmp_path / "other-ca").create("another CA")
    config = tmp_path / "mailcontinuity.toml"
    text = lab.config_file.read_text()
    assert lab.config.credentials is not None
    ca_line = f'tls_ca_file = "{lab.config.credentials.tls_ca_file}"'
    section = text.index("[credentials]")
    text = text[:section] + text[section:].replace(ca_line, f'tls_ca_file = "{other_ca.ca_file}"')
    config.write_text(text)
    before = copy_file(lab).read_bytes()
    failed = cli(lab, "credentials-sync", config=config)
    assert failed.returncode == 1
    assert "certificate verify failed" in failed.stderr.lower() or "ssl" in failed.stderr.lower()
    assert copy_file(lab).read_bytes() == before
    assert cli(lab, "credentials-sync").returncode == 0


@pytest.fixture(scope="module")
def ad_lab() -> Iterator[Lab]:
    with Lab.temporary(prefix="mclab-ad-", directory_kind="ad") as lab:
        yield lab


def set_continuity_password(lab: Lab, user: LabUser, new: str,
                            directory_password: str | None = None
                            ) -> subprocess.CompletedProcess[str]:
    """What a user runs in advance (passwords on standard input, never on the command line)."""
    return subprocess.run(
        [sys.executable, "-m", "mailcontinuity", "--config", str(lab.config_file),
         "continuity-password", "--login", user.login],
        input=f"{directory_password or user.password}\n{new}\n", capture_output=True,
        text=True, timeout=60, check=False)


def test_active_directory_continuity_passwords_end_to_end(ad_lab: Lab) -> None:
    """``--directory ad``: hashes cannot be read, so each user sets a continuity password in
    advance with their own directory credentials; while the directory answers they log in with
    their directory password (a bind as them), while it is away with the continuity password
    from the copy, and a user who set none cannot."""
    lab = ad_lab
    alice, bob = lab.users[:2]
    # the service account cannot read the directory's own hashes
    assert lab.directory is not None
    refreshed = cli(lab, "credentials-sync", "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    assert json.loads(refreshed.stdout)["users"] == 0
    # nobody sets a continuity password for someone else, nor with a wrong or equal password
    refused = set_continuity_password(lab, alice, "alice-continuity-1", bob.password)
    assert refused.returncode == 1 and "refused your login" in refused.stderr
    same = set_continuity_password(lab, alice, alice.password)
    assert same.returncode == 1 and "must differ" in same.stderr
    done = set_continuity_password(lab, alice, "alice-continuity-1")
    assert done.returncode == 0, done.stderr
    assert cli(lab, "credentials-sync").returncode == 0
    assert read_logins(copy_file(lab)) == [alice.login]
    assert "alice-continuity-1" not in copy_file(lab).read_text()
    # directory up: the directory password, not the continuity one
    assert logs_in(lab, "standby", alice)
    assert not logs_in(lab, "standby", LabUser(alice.login, "alice-continuity-1"))
    lab.part("directory").stop()
    try:
        assert logs_in(lab, "standby", LabUser(alice.login, "alice-continuity-1"))
        assert not logs_in(lab, "standby", alice)
        assert not logs_in(lab, "standby", bob)
    finally:
        lab.part("directory").start()
    assert logs_in(lab, "standby", bob)


def test_directory_and_primary_down_every_user_logs_in_to_the_webmail(lab: Lab) -> None:
    """The same outage seen from the portal (real Roundcube, its login form over HTTPS): every
    user logs in with their existing password; a user locked before the outage cannot."""
    from tests.lab.test_portal_security import webmail_login

    with_webmail = Lab.up(lab.dir, webmail=True)
    assert with_webmail.webmail is not None and with_webmail.directory is not None
    locked = with_webmail.users[2]
    with_webmail.directory.lock(locked.login)
    assert cli(lab, "credentials-sync").returncode == 0
    context = ssl.create_default_context(cafile=str(LabCertificates(lab.dir / "tls").ca_file))
    endpoint = with_webmail.webmail.endpoint
    try:
        with_webmail.part("directory").stop()
        with_webmail.part("primary").stop()
        for number, user in enumerate(with_webmail.users):
            _, ok = webmail_login(endpoint, context, f"127.0.18.{number + 1}", user.login,
                                  user.password)
            assert ok == (user != locked), user.login
    finally:
        with_webmail.part("webmail").stop()
        with_webmail.part("directory").start()
        with_webmail.part("primary").start()
        with_webmail.directory.unlock(locked.login)
        assert cli(lab, "credentials-sync").returncode == 0


def restart_standby(lab: Lab, config_text: str) -> None:
    """Apply a changed [credentials] to the standby's Dovecot, as check-config and the role
    would: the lab's configuration rewritten, the standby's passdb rendered from it again."""
    lab.config_file.write_text(config_text)
    changed = Lab.load(lab.dir)
    changed.standby.stop()
    changed.standby.write_config()
    changed.standby.start()


def test_copy_first_keeps_logins_fast_while_the_directory_hangs(lab: Lab) -> None:
    """``check_first = "copy"``: a directory that hangs (slapd stopped with SIGSTOP: it accepts
    connections and never answers) costs the users in the copy nothing."""
    original = lab.config_file.read_text()
    assert cli(lab, "credentials-sync").returncode == 0
    assert lab.directory is not None
    pid = lab.directory.pid()
    assert pid is not None
    try:
        restart_standby(lab, original.replace("\n[credentials]\n",
                                              '\n[credentials]\ncheck_first = "copy"\n', 1))
        os.kill(pid, signal.SIGSTOP)
        imap, tls = lab.endpoint("standby", "imap"), lab.tls("standby")
        for number, user in enumerate(lab.users):
            took, answer = timed_login(imap, tls, f"127.0.23.{number + 1}", user.login,
                                       user.password)
            assert "Logged in" in answer and took < 3, (user.login, took, answer)
    finally:
        os.kill(pid, signal.SIGCONT)
        restart_standby(lab, original)
    assert logs_in(lab, "standby", lab.users[0])

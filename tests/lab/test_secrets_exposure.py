"""After a full lab run (outage, mail, failback, drill), no secret the lab holds appears in any
output, log, process list, state store or config; and every daemon log line is key=value."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess

from click.testing import CliRunner
from psycopg import sql

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.postgres import DATABASE
from tests.lab.backends import lab_on_both_stores
from tests.lab.kv import parse_kv
from tests.lab.outage_helpers import forced_outage, gateway_mail, wait_all

# Files whose job is to hold credentials: lab.json (by contract), the secrets directory the
# config references, and the lab Dovecots' passwd-files.
CREDENTIAL_STORES = ("lab.json", "secrets/", "primary/users", "primary/masters", "standby/users",
                     "standby/masters")

# The store's content and, on PostgreSQL, its server's files and log and the store's password.
lab_fixture = lab_on_both_stores()


def lab_secrets(lab: Lab) -> dict[str, str]:
    description = json.loads((lab.dir / "lab.json").read_text())
    found = {f"password of {user['login']}": user["password"] for user in description["users"]}
    for name in ("admin-password", "drill-probe-password"):
        found[f"secrets/{name}"] = (lab.dir / "secrets" / name).read_text().strip()
    if lab.config.state.password_file is not None:  # the PostgreSQL store's
        found["state.password_file"] = lab.config.state.password_file.read_text().strip()
    assert all(len(secret) >= 12 for secret in found.values())
    return found


def command_outputs(lab: Lab) -> dict[str, str]:
    """What an operator (or monitoring) sees of every reporting command, stdout and stderr."""
    runner = CliRunner()
    config = ["--config", str(lab.config_file)]
    outputs = {}
    with forced_outage(lab):
        message = gateway_mail(lab, lab.users[:2], "mail during the secrets test")
        wait_all(lab, "standby", lab.users[:2], message["Message-ID"])
        outputs["status during outage"] = runner.invoke(main, [*config, "status", "--json"])
        outputs["failback"] = runner.invoke(main, [*config, "failback", "--yes", "--json"])
    for name, args in {"status": ["status", "--json"], "drill": ["drill", "--json"],
                       "audit": ["audit", "--json"],
                       "check-config": ["check-config", "--json"]}.items():
        outputs[name] = runner.invoke(main, [*config, *args])
    assert outputs["failback"].exit_code == 0, outputs["failback"].output
    assert json.loads(outputs["audit"].stdout), "the audit trail should not be empty"
    return {name: result.stdout + result.stderr for name, result in outputs.items()}


def lab_files(lab: Lab) -> dict[str, bytes]:
    """Every regular file under the lab directory but the credential stores: logs of the
    daemons, Dovecot and Postfix, hooks, drill reports, the config, the state store."""
    files = {}
    for path in sorted(lab.dir.rglob("*")):
        relative = path.relative_to(lab.dir).as_posix()
        if path.is_file() and not path.is_symlink() and not relative.startswith(
                CREDENTIAL_STORES):
            try:
                files[relative] = path.read_bytes()
            except FileNotFoundError:  # a PostgreSQL server's temporary file, gone since
                continue
    return files


def state_dump(lab: Lab) -> str:
    """Every row of the store as text (SQLite's dump; every table of PostgreSQL's)."""
    if lab.store_server is not None:
        with lab.store_server.admin(DATABASE) as connection:
            tables = [row[0] for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
            assert "state" in tables, tables
            return "\n".join(
                f"{table}: {row}" for table in tables
                for row in connection.execute(sql.SQL("SELECT * FROM {}").format(
                    sql.Identifier(str(table)))).fetchall())
    connection = sqlite3.connect(lab.config.state.path)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


def test_no_secret_in_outputs_logs_processes_or_state(lab: Lab) -> None:
    secrets = lab_secrets(lab)
    texts = command_outputs(lab)
    texts["ps -eo args"] = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                          check=True).stdout
    texts["state store dump"] = state_dump(lab)
    texts["mailcontinuity.toml"] = lab.config_file.read_text()
    files = lab_files(lab)
    assert any(name.startswith("daemons/") and name.endswith(".log") for name in files)
    assert any(name.startswith("gateway/log") for name in files), sorted(files)[:20]
    leaks = [f"{what} in {where}" for what, secret in secrets.items()
             for where, text in texts.items() if secret in text]
    leaks += [f"{what} in {where}" for what, secret in secrets.items()
              for where, data in files.items() if secret.encode() in data]
    assert not leaks

    assert stat.S_IMODE((lab.dir / "lab.json").stat().st_mode) == 0o600
    for name in ("admin-password", "drill-probe-password"):
        assert stat.S_IMODE((lab.dir / "secrets" / name).stat().st_mode) == 0o600


def test_every_daemon_log_line_is_key_value(lab: Lab) -> None:
    logs = sorted((lab.dir / "daemons").glob("*.log"))
    assert {path.stem for path in logs} >= {"milter", "policyd", "sync-agent"}
    bad = []
    for path in logs:
        lines = path.read_text(errors="replace").splitlines()
        assert lines, f"{path} is empty: the daemon logs its start"
        for number, line in enumerate(lines, start=1):
            try:
                fields = parse_kv(line)
            except ValueError as exc:
                bad.append(f"{path.name}:{number}: {exc}")
                continue
            if "event" not in fields or "level" not in fields:
                bad.append(f"{path.name}:{number}: no event/level: {line[:120]}")
    assert not bad, "\n".join(bad[:20])


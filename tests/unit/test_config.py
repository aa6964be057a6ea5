"""The configuration loader: valid files load, every mistake is one line naming file and key."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import (
    ConfigError,
    DeliveryEndpoint,
    Endpoint,
    load_config,
    read_secret,
    secret_files,
)
from mailcontinuity.mail.tls import TLSPolicy

VALID = """
[state]
path = "/var/lib/mailcontinuity/state.db"

[domains]
protected = ["Example.ORG", "example.net"]

[primary]
delivery = "smtp:mail.example.org:25"
imap = "mail.example.org:143"

[standby]
imap = "127.0.0.1:143"
lmtp = "127.0.0.1:24"
retention_days = 45
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(text)
    return path


def test_valid_file_loads_into_typed_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.domains.protected == ["example.org", "example.net"]
    assert config.primary.delivery == DeliveryEndpoint("smtp", Endpoint("mail.example.org", 25))
    assert config.primary.delivery.postfix_nexthop == "smtp:[mail.example.org]:25"
    assert config.standby.lmtp == Endpoint("127.0.0.1", 24)
    assert config.standby.retention_days == 45
    assert config.standby.submission is None
    assert config.gateway.postfix_config_dir == Path("/etc/postfix")


def test_lmtp_delivery_uses_postfix_inet_syntax(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID.replace("smtp:mail", "lmtp:mail")))
    assert config.primary.delivery.postfix_nexthop == "lmtp:inet:[mail.example.org]:25"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("imap = \"mail.example.org:143\"", "imapp = \"mail.example.org:143\""),
         "unknown key 'primary.imapp'"),
        (("retention_days = 45", "retention_days = 0"), "key 'standby.retention_days'"),
        (("retention_days = 45", "retention_days = \"soon\""), "key 'standby.retention_days'"),
        (("127.0.0.1:143", "127.0.0.1:70000"), "port 70000 is out of range 1-65535"),
        (("127.0.0.1:143", "127.0.0.1"), "key 'standby.imap': expected \"host:port\""),
        (("smtp:mail", "pop3:mail"), "key 'primary.delivery'"),
        (("\"example.net\"", "\"user@example.net\""), "key 'domains.protected'"),
        (("protected = [\"Example.ORG\", \"example.net\"]", "protected = []"),
         "key 'domains.protected'"),
        (("[standby]", "[standby]\n[standby.extra]"), "unknown key 'standby.extra'"),
        (("lmtp = \"127.0.0.1:24\"", ""), "missing key 'standby.lmtp'"),
        (("[primary]", "[primary"), "not valid TOML"),
        # Strict types: a quoted number or a boolean for a number is a mistake, not a value.
        (("retention_days = 45", "retention_days = \"30\""),
         "key 'standby.retention_days': Input should be a valid integer (got '30')"),
        (("retention_days = 45", "retention_days = 45\n[sync]\nconcurrency = true"),
         "key 'sync.concurrency': Input should be a valid integer (got True)"),
        (("retention_days = 45", "retention_days = 45\n[metrics]\nenabled = \"yes\""),
         "key 'metrics.enabled': Input should be a valid boolean (got 'yes')"),
        (("[state]", "[state]\nretention_days = 9.5"), "key 'state.retention_days'"),
        (("[state]", "hooks_dir = 5\n[state]"), "key 'hooks_dir'"),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_key(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    path = write(tmp_path, VALID.replace(*edit))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError,
                       match="configuration file not found; create it or pass --config"):
        load_config(tmp_path / "absent.toml")


def test_environment_variable_names_the_default(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, VALID.replace("retention_days = 45", "retention_days = -1"))
    monkeypatch.setenv("MAILCONTINUITY_CONFIG", str(path))
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert str(path) in result.stderr and "standby.retention_days" in result.stderr


def test_check_config_prints_settings_to_apply(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "postconf -e 'relay_domains = example.org, example.net'" in out
    assert "postconf -e 'transport_maps = hash:/etc/postfix/mailcontinuity_transport'" in out
    assert "example.org smtp:[mail.example.org]:25" in out
    assert "inet_listener lmtp {\n    address = 127.0.0.1\n    port = 24" in out


def test_check_config_json_is_what_automation_applies(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    result = CliRunner().invoke(main, ["--config", str(path), "check-config", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["postfix_main"]["relay_domains"] == "example.org, example.net"
    assert report["transport_map"]["lines"] == [
        "example.org smtp:[mail.example.org]:25", "example.net smtp:[mail.example.org]:25"]
    assert "service lmtp {" in report["dovecot_standby"]


@pytest.mark.parametrize(("section", "key", "moved_to"), [
    ("sync", 'tls = "ssl"', "primary.tls"),
    ("sync", 'tls_ca_file = "/etc/ssl/ca.pem"', "primary.tls_ca_file"),
    ("sieve", 'tls = "starttls"', "primary.tls and standby.tls"),
])
def test_tls_keys_that_moved_say_where(tmp_path: Path, section: str, key: str,
                                       moved_to: str) -> None:
    path = write(tmp_path, f"{VALID}\n[{section}]\n{key}\n")
    with pytest.raises(ConfigError, match=f"key '{section}.tls.*' has moved to {moved_to}"):
        load_config(path)


def test_tls_is_on_by_default_and_verified_against_the_system_cas(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    for side in ("primary", "standby"):
        policy = TLSPolicy.of(config, side)
        assert policy.mode == "starttls" and policy.ca_file is None
        context = policy.context
        assert context is not None
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_ca_file_that_cannot_be_loaded_is_a_config_error(tmp_path: Path,
                                                          content: str | None) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    text = VALID.replace('imap = "mail.example.org:143"',
                         f'imap = "mail.example.org:143"\ntls_ca_file = "{ca_file}"')
    with pytest.raises(ConfigError, match=f"key 'primary.tls_ca_file': cannot load {ca_file}"):
        load_config(write(tmp_path, text))


def secret_config(tmp_path: Path, mode: int, content: str = "s3cret-Value\n") -> Path:
    secret = tmp_path / "admin-password"
    secret.write_text(content)
    secret.chmod(mode)
    return write(tmp_path, f'{VALID}\n[sync]\npassword_file = "{secret}"\n')


@pytest.mark.parametrize(("mode", "problem"), [
    (0o644, "is accessible to every user"), (0o604, "is accessible to every user"),
    (0o602, "is accessible to every user"), (0o660, "is writable by its group")])
def test_a_secrets_file_other_users_can_read_is_refused(tmp_path: Path, mode: int,
                                                         problem: str) -> None:
    path = secret_config(tmp_path, mode)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: key 'sync.password_file': ")
    assert problem in message and f"mode {mode:04o}" in message and "chmod 600" in message
    assert "s3cret" not in message


def test_a_private_secrets_file_is_read_and_its_value_never_echoed(tmp_path: Path) -> None:
    config = load_config(secret_config(tmp_path, 0o600))
    assert read_secret(config, "sync.password_file") == "s3cret-Value"
    assert read_secret(load_config(secret_config(tmp_path, 0o640)),
                       "sync.password_file") == "s3cret-Value"
    empty = load_config(secret_config(tmp_path, 0o600, content="\n"))
    with pytest.raises(ConfigError, match="key 'sync.password_file': .* is empty"):
        read_secret(empty, "sync.password_file")


def test_every_password_file_key_is_a_checked_secret(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID + """
[sieve]
standby_admin_login = "sieveadmin"
standby_password_file = "/etc/mailcontinuity/secrets/standby-sieve"

[health]
imap_login = "probe"
imap_password_file = "/etc/mailcontinuity/secrets/imap-probe"
"""))
    assert set(secret_files(config)) == {"drill.probe_password_file", "sync.password_file",
                                         "sieve.standby_password_file",
                                         "health.imap_password_file"}


def test_check_config_holds_the_gateways_deliveries_to_tls(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('retention_days = 45', 'retention_days = 45\n'
                                         'tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"'))
    result = CliRunner().invoke(main, ["--config", str(path), "check-config", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tls_policy_map"]["lines"] == [
        "[mail.example.org]:25 secure match=nexthop",
        "[127.0.0.1]:24 secure match=nexthop tafile=/etc/ssl/certs/ca-certificates.crt"]
    table = "hash:/etc/postfix/mailcontinuity_tls_policy"
    assert report["postfix_main"]["smtp_tls_policy_maps"] == table
    assert report["postfix_main"]["lmtp_tls_policy_maps"] == table
    plaintext = write(tmp_path, VALID.replace("retention_days = 45", 'tls = "none"').replace(
        'imap = "mail.example.org:143"', 'imap = "mail.example.org:143"\ntls = "none"'))
    result = CliRunner().invoke(main, ["--config", str(plaintext), "check-config", "--json"])
    report = json.loads(result.stdout)
    assert report["tls_policy_map"]["lines"] == []
    assert "smtp_tls_policy_maps" not in report["postfix_main"]


def test_the_probe_source_address_must_be_an_address() -> None:
    """[health] probe_source_address is bound by the probes: a host name is refused up front."""
    from mailcontinuity.config import HealthSection
    assert HealthSection(probe_source_address="127.0.0.7").probe_source_address == "127.0.0.7"
    with pytest.raises(ValueError, match="probe_source_address must be an IP address"):
        HealthSection(probe_source_address="gateway.example")


def test_xoauth2_needs_its_token_endpoint_over_https(tmp_path: Path) -> None:
    def sync(lines: str) -> Path:
        return write(tmp_path, VALID + '\n[sync]\nlogin_method = "xoauth2"\n' + lines)

    with pytest.raises(ConfigError, match="oauth2_token_url and oauth2_client_id"):
        load_config(sync(""))
    with pytest.raises(ConfigError, match="use https://"):
        load_config(sync('oauth2_token_url = "http://login.example/t"\noauth2_client_id = "a"\n'))
    config = load_config(sync('oauth2_token_url = "https://login.example/t"\n'
                              'oauth2_client_id = "a"\n'))
    assert config.sync.oauth2_scope == "https://outlook.office365.com/.default"
    load_config(sync('oauth2_token_url = "http://127.0.0.1:8080/t"\noauth2_client_id = "a"\n'))


def test_a_probe_that_logs_in_as_sync_does_takes_no_password_file() -> None:
    """[health] imap_login_method = "sync": the secret is sync.password_file, one key per fact."""
    from mailcontinuity.config import HealthSection
    probe = HealthSection(imap_login="probe@example.org", imap_login_method="sync")
    assert probe.imap_password_file is None
    with pytest.raises(ValueError, match="no imap_password_file"):
        HealthSection(imap_login="probe@example.org", imap_login_method="sync",
                      imap_password_file=Path("/etc/mailcontinuity/probe"))
    with pytest.raises(ValueError, match="needs imap_login"):
        HealthSection(imap_login_method="sync")


def test_the_probe_logs_in_as_sync_only_where_the_primary_takes_no_passwords(
        tmp_path: Path) -> None:
    """imap_login_method = "sync" with a password method would put sync.password_file (it
    opens every mailbox) on every gateway: refused, naming the alternative."""
    probe = '\n[health]\nimap_login = "probe@example.org"\nimap_login_method = "sync"\n'
    for method in ("master_user", "sasl_plain"):
        with pytest.raises(ConfigError, match="needs sync.login_method = .xoauth2.*own"):
            load_config(write(tmp_path, VALID + probe
                              + f'\n[sync]\nlogin_method = "{method}"\n'))
    config = load_config(write(tmp_path, VALID + probe + '\n[sync]\nlogin_method = "xoauth2"\n'
                               'oauth2_token_url = "https://login.example/t"\n'
                               'oauth2_client_id = "a"\n'))
    assert config.health.imap_login_method == "sync"

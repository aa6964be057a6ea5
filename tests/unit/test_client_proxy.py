"""The client proxy's route file, its Dovecot settings and its configuration checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcontinuity.config import Config, ConfigError, load_config
from mailcontinuity.deploy.proxy import (
    dovecot_proxy_settings,
    route_lines,
    write_route_file,
)
from mailcontinuity.deploy.settings import (
    dovecot_standby_hardening,
    render_check_config,
    settings_report,
)

BASE = """
[domains]
protected = ["example.org"]

[primary]
delivery = "lmtp:mail.example.org:24"
imap = "mail.example.org:143"
submission = "mail.example.org:587"
tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"

[standby]
imap = "standby.example.org:143"
lmtp = "standby.example.org:24"
submission = "standby.example.org:587"
tls = "ssl"
tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"
webmail_address = "192.0.2.9"

[proxy]
imap = "192.0.2.1:143"
imaps = "192.0.2.1:993"
submission = "192.0.2.1:587"
tls_cert_file = "/etc/ssl/imap.example.org.pem"
tls_key_file = "/etc/ssl/private/imap.example.org.key"
route_file = "ROUTE"
source_address = "192.0.2.2"
"""


def config_with(tmp_path: Path, text: str = BASE) -> Config:
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(text.replace("ROUTE", str(tmp_path / "route")))
    return load_config(path)


def test_route_lines_follow_the_route_with_each_sides_tls(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert route_lines(config, "primary") == [
        "imap:::::::proxy=y nopassword=y host=mail.example.org port=143 starttls=yes"
        " source_ip=192.0.2.2",
        "submission:::::::proxy=y nopassword=y host=mail.example.org port=587 starttls=yes"
        " source_ip=192.0.2.2",
    ]
    assert route_lines(config, "standby")[0] == (
        "imap:::::::proxy=y nopassword=y host=standby.example.org port=143 ssl=yes"
        " source_ip=192.0.2.2")


def test_a_side_without_tls_gets_no_tls_field(tmp_path: Path) -> None:
    config = config_with(tmp_path, BASE.replace('tls = "ssl"', 'tls = "none"'))
    assert "ssl=" not in route_lines(config, "standby")[0]
    assert "starttls" not in route_lines(config, "standby")[0]


def test_route_file_is_replaced_whole_and_readable(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    write_route_file(config, "primary")
    write_route_file(config, "standby")
    route = tmp_path / "route"
    assert route.read_text().splitlines() == route_lines(config, "standby")
    assert route.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailcontinuity.toml", "route"]


def test_dovecot_settings_listen_verify_and_route_by_protocol(tmp_path: Path) -> None:
    text = dovecot_proxy_settings(config_with(tmp_path))
    assert "protocols = imap submission\n" in text
    assert "ssl = required\n" in text
    assert "ssl_ca = </etc/ssl/certs/ca-certificates.crt\n" in text
    assert f"args = username_format=%s {tmp_path / 'route'}\n" in text
    assert "inet_listener imaps {\n    address = 192.0.2.1\n    port = 993\n    ssl = yes\n" in text
    assert "inet_listener submissions {\n    port = 0\n" in text


def test_stores_trust_the_proxy_and_the_portal(tmp_path: Path) -> None:
    hardening = dovecot_standby_hardening(config_with(tmp_path))
    assert hardening["login_trusted_networks"] == "192.0.2.9/32 192.0.2.2/32"


def test_check_config_prints_the_proxy(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert "# Client proxy" in render_check_config(config)
    report = settings_report(config)["client_proxy"]
    assert report["route_file"]["lines"] == route_lines(config, "primary")
    without = config_with(tmp_path, BASE.split("[proxy]")[0])
    assert settings_report(without)["client_proxy"] is None
    assert "# Client proxy" not in render_check_config(without)


def test_submission_proxy_needs_both_destinations(tmp_path: Path) -> None:
    text = BASE.replace('submission = "mail.example.org:587"\n', "")
    with pytest.raises(ConfigError, match="proxy.submission needs primary.submission"):
        config_with(tmp_path, text)


def test_one_ca_file_for_both_stores(tmp_path: Path) -> None:
    text = BASE.replace('tls = "ssl"\ntls_ca_file = "/etc/ssl/certs/ca-certificates.crt"',
                        'tls = "ssl"\ntls_ca_file = "/etc/ssl/other-ca.pem"')
    with pytest.raises(ConfigError, match="one CA file"):
        config_with(tmp_path, text)


def test_source_address_must_be_an_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        config_with(tmp_path, BASE.replace('"192.0.2.2"', '"proxy.example.org"'))

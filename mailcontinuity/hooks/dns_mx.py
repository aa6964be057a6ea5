"""Hook: point the MX records at the standby on failover, back at the primary afterwards.

For sites that fail over by MX rather than by routing on a gateway: an RFC 2136 dynamic update
(dnspython) replaces the MX RRset in one atomic UPDATE message, signed with TSIG when a key is
given. Installed as ``mailcontinuity-hook-dns-mx``; link it into ``on-failover.d/`` and
``on-normal.d/`` (and ``on-failback.d/`` to move mail back before the merge ends). Settings, in
``hooks_dir/environment``:

- ``MAILCONTINUITY_DNS_SERVER``: the primary authoritative server, ``host`` or ``host:port``.
- ``MAILCONTINUITY_DNS_ZONE``: the zone to update, e.g. ``example.org``.
- ``MAILCONTINUITY_DNS_MX_NAME``: the owner of the MX records (default: the zone apex).
- ``MAILCONTINUITY_DNS_MX_PRIMARY``: MX records in normal times, ``10 mx1.example.org.`` (several
  separated by commas).
- ``MAILCONTINUITY_DNS_MX_STANDBY``: MX records during a failover.
- ``MAILCONTINUITY_DNS_TTL``: TTL of the new records (default 300; keep it short).
- ``MAILCONTINUITY_DNS_TSIG_KEY_FILE``: a file holding ``algorithm:name:secret`` (nsupdate -y
  format, e.g. ``hmac-sha256:mailcontinuity:base64secret``); unsigned updates without it.
- ``MAILCONTINUITY_DNS_TIMEOUT``: seconds to wait for the server (default 10).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from mailcontinuity.config import parse_endpoint
from mailcontinuity.hooks.runner import Transition

# Which records each state wants: mail goes to the standby only while in failover.
RECORDS_FOR_STATE = {"failover": "MAILCONTINUITY_DNS_MX_STANDBY",
                     "failback": "MAILCONTINUITY_DNS_MX_PRIMARY",
                     "normal": "MAILCONTINUITY_DNS_MX_PRIMARY"}


class SettingError(Exception):
    """A missing or malformed setting; the message names it."""


@dataclass(frozen=True)
class MxUpdate:
    server: str
    port: int
    zone: dns.name.Name
    owner: dns.name.Name
    records: list[dns.rdata.Rdata]
    ttl: int
    keyring: dict[dns.name.Name, dns.tsig.Key] | None
    timeout: float

    def message(self) -> dns.update.UpdateMessage:
        """Delete the MX RRset and add the new records: one message, applied atomically."""
        update = dns.update.UpdateMessage(self.zone, keyring=self.keyring)
        update.replace(self.owner, self.ttl, *self.records)
        return update

    def send(self) -> None:
        try:
            answer = dns.query.tcp(self.message(), self.server, port=self.port,
                                   timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            raise RuntimeError(f"DNS server {self.server}:{self.port}: {exc}; check that it"
                               " serves the zone and has the same TSIG key") from None
        if answer.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"DNS server {self.server}:{self.port} refused the update of"
                               f" {self.owner} MX: {dns.rcode.to_text(answer.rcode())}; check"
                               " its update ACL and the TSIG key")


def _required(env: Mapping[str, str], key: str) -> str:
    value = env.get(key, "").strip()
    if not value:
        raise SettingError(f"{key} is not set; set it in the hooks directory's environment file")
    return value


def read_keyring(path: str) -> dict[dns.name.Name, dns.tsig.Key]:
    """``algorithm:name:secret`` from the key file (as ``nsupdate -y`` takes it)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingError(f"MAILCONTINUITY_DNS_TSIG_KEY_FILE {path}: {exc.strerror}") from None
    algorithm, _, rest = text.partition(":")
    name, _, secret = rest.partition(":")
    if not (algorithm and name and secret):
        raise SettingError(f"MAILCONTINUITY_DNS_TSIG_KEY_FILE {path}: expected"
                           " algorithm:name:secret, e.g. hmac-sha256:mykey:base64secret")
    try:
        key = dns.tsig.Key(name, secret, algorithm)
    except (ValueError, dns.exception.DNSException) as exc:
        raise SettingError(f"MAILCONTINUITY_DNS_TSIG_KEY_FILE {path}: {exc}") from None
    return {key.name: key}


def mx_update(env: Mapping[str, str], state: str) -> MxUpdate:
    """The update the transition into ``state`` calls for, from the hook's settings."""
    if state not in RECORDS_FOR_STATE:
        raise SettingError(f"no MX records for state {state!r}")
    server_text = _required(env, "MAILCONTINUITY_DNS_SERVER")
    try:
        server = parse_endpoint(server_text if ":" in server_text else f"{server_text}:53")
    except ValueError as exc:
        raise SettingError(f"MAILCONTINUITY_DNS_SERVER: {exc}") from None
    zone = dns.name.from_text(_required(env, "MAILCONTINUITY_DNS_ZONE"))
    owner = dns.name.from_text(env.get("MAILCONTINUITY_DNS_MX_NAME") or zone.to_text())
    if not owner.is_subdomain(zone):
        raise SettingError(f"MAILCONTINUITY_DNS_MX_NAME {owner} is outside the zone {zone}")
    key = RECORDS_FOR_STATE[state]
    try:
        records = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.MX, item.strip(),
                                       origin=zone)
                   for item in _required(env, key).split(",") if item.strip()]
        ttl = int(env.get("MAILCONTINUITY_DNS_TTL", "300"))
        timeout = float(env.get("MAILCONTINUITY_DNS_TIMEOUT", "10"))
    except (ValueError, dns.exception.SyntaxError) as exc:
        raise SettingError(f"{key} or TTL/timeout: {exc} (expected e.g. '10 mx1.example.org.')"
                           ) from None
    key_file = env.get("MAILCONTINUITY_DNS_TSIG_KEY_FILE")
    keyring = read_keyring(key_file) if key_file else None
    return MxUpdate(server.host, server.port, zone, owner, records, ttl, keyring, timeout)


def run(env: Mapping[str, str]) -> int:
    try:
        transition = Transition.from_environment(env)
        update = mx_update(env, transition.new_state)
        update.send()
    except (SettingError, ValueError, RuntimeError, dns.exception.DNSException) as exc:
        print(f"dns-mx hook: {exc}", file=sys.stderr)
        return 1
    targets = ", ".join(record.to_text() for record in update.records)
    print(f"{update.owner} MX -> {targets} (state {transition.new_state})")
    return 0


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

"""The lab's own certificate authority, so that every lab hop runs TLS verified as in production.

A production standby and primary present certificates from the site's CA; the lab makes a private
CA under ``DIR/tls`` and one server certificate signed by it, valid for the names and loopback
addresses the lab's servers answer on. Tests make a second, unrelated CA the same way to show that
a client configured with the wrong CA refuses to talk.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# What the lab's servers are reached as: clients check the certificate against the endpoint's
# host, which in the lab is a loopback address.
SERVER_NAMES = ("localhost", "primary.lab.test", "standby.lab.test", "gateway.lab.test")
SERVER_ADDRESSES = ("127.0.0.1", "127.0.0.2")
VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class LabCertificates:
    """A CA and a server certificate (with its key) in one directory."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    def exists(self) -> bool:
        return all(path.exists() for path in (self.ca_file, self.cert_file, self.key_file))

    def create(self, common_name: str = "mailcontinuity lab CA",
               addresses: Sequence[str] = ()) -> LabCertificates:
        """Write a fresh CA and server certificate; the server key is readable by root only
        (Dovecot and Postfix read their keys as root before dropping privileges).
        ``addresses`` adds the lab hosts' own addresses (a multi-host lab) to the loopback
        ones the certificate names."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(address))
                  for address in (*SERVER_ADDRESSES, *addresses)]
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0])]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.touch(mode=0o600)
        self.key_file.chmod(0o600)
        self.key_file.write_bytes(server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return self

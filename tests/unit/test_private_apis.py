"""The private parts of libraries we rely on are still there, in versions we pinned.

mail/imap.py sends MULTIAPPEND on imaplib's and imapclient's internals, mail/managesieve.py
replaces sievelib's TLS and bearer-token authentication steps, journal/listener.py hooks
pymilter's socket opening. An upgrade that moves any of them must fail here, loudly, before it
fails in an outage.
"""

from __future__ import annotations

import imaplib
import importlib.metadata
import inspect

import Milter
import milter
from imapclient import IMAPClient
from packaging.requirements import Requirement
from sievelib.managesieve import Client

from mailcontinuity.mail.imap import PRIVATE_PARTS


def test_the_multiappend_shim_finds_its_parts() -> None:
    owners = {"imaplib.IMAP4": imaplib.IMAP4, "imapclient.IMAPClient": IMAPClient}
    for owner, names in PRIVATE_PARTS.items():
        source = inspect.getsource(owners[owner])
        for name in names:
            assert hasattr(owners[owner], name) or f"self.{name} =" in source, (owner, name)


def test_sievelib_still_has_the_tls_step_we_replace() -> None:
    assert callable(getattr(Client, "_Client__enable_ssl", None))


def test_sievelib_still_has_the_authentication_steps_we_replace() -> None:
    """mail/managesieve.py picks the bearer mechanism in ``__authenticate`` and sends its own
    XOAUTH2/OAUTHBEARER responses with ``__send_command`` (sievelib's XOAUTH2 is malformed)."""
    for name in ("_Client__authenticate", "_Client__send_command", "_xoauth2_authentication",
                 "_oauthbearer_authentication", "get_sasl_mechanisms"):
        assert callable(getattr(Client, name, None)), name
    assert "getattr(self, \"_%s_authentication\" % mech)" in inspect.getsource(Client)


def test_pymilter_still_opens_its_socket_through_the_function_we_wrap() -> None:
    assert callable(milter.opensocket)
    assert "opensocket" in inspect.getsource(Milter.runmilter)


def test_installed_versions_are_within_the_pins() -> None:
    """What pip installed satisfies pyproject's bounds (an environment built otherwise, or a
    bound loosened without a look at the private parts, shows here)."""
    for line in importlib.metadata.requires("mailcontinuity") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name.lower() not in ("imapclient", "sievelib", "pymilter"):
            continue
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed), (requirement, installed)

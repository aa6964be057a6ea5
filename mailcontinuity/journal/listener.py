"""The milter's listening socket: its name for libmilter and for Postfix, and how it is tuned.

Why a unix socket is the recommended ``[milter] listen`` (docs/benchmarks.md has the figures):
over TCP, Postfix's milter client and libmilter both send small packets that the peer does not
answer at once (a macro packet before each command, no-reply headers and body chunks, a header
change before the final reply). Nagle's algorithm holds each such packet until the previous one
is acknowledged, and the peer delays that acknowledgement by up to 40 ms: about 100 ms per message,
which capped even an empty pymilter at a quarter of Postfix's throughput. A unix socket has no
Nagle. On TCP the milter at least switches Nagle off on its own side (TCP_NODELAY on the
listener, inherited by every accepted connection); Postfix's side cannot be changed from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import milter

from mailcontinuity.config import Endpoint, MilterSection, UnixSocket
from mailcontinuity.mail.postfix import grant_postfix_access

log = logging.getLogger(__name__)

Listen = Endpoint | UnixSocket


def libmilter_name(listen: Listen) -> str:
    """pymilter's syntax: ``unix:/path`` or ``inet:PORT@HOST`` (Postfix's is ``inet:HOST:PORT``)."""
    if isinstance(listen, UnixSocket):
        return f"unix:{listen.path}"
    return f"inet:{listen.port}@{listen.host}"


def accepts_connections(listen: Listen, timeout: float = 1.0) -> bool:
    """Whether the milter serves (the lab's readiness check)."""
    if isinstance(listen, Endpoint):
        target: tuple[str, int] | str = (listen.host, listen.port)
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    else:
        target, family = str(listen.path), socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(target)
        except OSError:
            return False
    return True


def prepare(listen: Listen) -> None:
    """Create the directory of a unix socket (the socket itself is libmilter's)."""
    if isinstance(listen, UnixSocket):
        listen.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)


@contextlib.contextmanager
def tuned_listener(settings: MilterSection) -> Iterator[None]:
    """Tune libmilter's listening socket as soon as it exists: a unix socket for Postfix's group
    only, a TCP one without Nagle.

    pymilter's ``runmilter`` opens the socket and starts serving in one call, so the hook goes
    into its call of ``milter.opensocket`` for the duration of ``runmilter``.
    """
    original = milter.opensocket
    listen = settings.listen

    def open_and_tune(remove_stale: bool) -> object:
        result = original(remove_stale)
        if isinstance(listen, UnixSocket):
            grant_postfix_access(listen.path, settings.socket_group, settings.socket_mode,
                                 "milter.socket")
        else:
            _disable_nagle(listen)
        return result

    milter.opensocket = open_and_tune
    try:
        yield
    finally:
        milter.opensocket = original


def _disable_nagle(listen: Endpoint) -> None:
    """Find libmilter's listening socket among our descriptors and set TCP_NODELAY on it."""
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket (or closed meanwhile)
            continue
        with candidate:
            if (candidate.family in (socket.AF_INET, socket.AF_INET6)
                    and candidate.type == socket.SOCK_STREAM
                    and candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and candidate.getsockname()[1] == listen.port):
                candidate.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return
    log.warning("event=nodelay_not_set listen=%s reason=listening_socket_not_found", listen)

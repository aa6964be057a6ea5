"""Hook: POST the transition as JSON to a webhook (chat tools, incident systems).

Installed as the ``mailcontinuity-hook-webhook`` executable; link it into ``on-failover.d/``
(and ``on-failback.d``, ``on-normal.d``). Settings, in ``hooks_dir/environment``:

- ``MAILCONTINUITY_WEBHOOK_URL`` (required): where to POST.
- ``MAILCONTINUITY_WEBHOOK_TOKEN`` (optional): sent as ``Authorization: Bearer <token>``.
- ``MAILCONTINUITY_WEBHOOK_TIMEOUT`` (optional, seconds, default 10).

The body carries the transition's fields plus ``text``, a one-line summary that Slack,
Mattermost and Rocket.Chat incoming webhooks display as the message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from mailcontinuity.hooks.runner import Transition


def payload(transition: Transition, host: str) -> dict[str, Any]:
    """``old_state``, ``new_state``, ``cause``, ``actor``, ``time`` (UTC), ``host``, ``text``."""
    fields = {key.lower(): value for key, value in transition.environment().items()}
    return {
        "text": f"mailcontinuity on {host}: {transition.old_state} -> {transition.new_state}"
                f" ({transition.cause}, by {transition.actor})",
        "host": host,
        **fields,
    }


def post(url: str, body: dict[str, Any], token: str | None, timeout: float) -> int:
    """POST ``body`` as JSON; the HTTP status, or urllib's error for a non-2xx answer."""
    headers = {"Content-Type": "application/json", "User-Agent": "mailcontinuity-hook"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


def run(env: Mapping[str, str]) -> int:
    url = env.get("MAILCONTINUITY_WEBHOOK_URL", "")
    if not url.startswith(("http://", "https://")):
        print("MAILCONTINUITY_WEBHOOK_URL is not set to an http(s) URL; set it in the hooks"
              " directory's environment file", file=sys.stderr)
        return 2
    try:
        transition = Transition.from_environment(env)
        timeout = float(env.get("MAILCONTINUITY_WEBHOOK_TIMEOUT", "10"))
    except ValueError as exc:
        print(f"webhook hook: {exc}", file=sys.stderr)
        return 2
    try:
        status = post(url, payload(transition, socket.getfqdn()),
                      env.get("MAILCONTINUITY_WEBHOOK_TOKEN"), timeout)
    except urllib.error.HTTPError as exc:
        print(f"webhook {url} answered {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"webhook {url} not reached: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(f"posted {transition.old_state} -> {transition.new_state} to {url}: HTTP {status}")
    return 0


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

"""The emergency portal says what is going on: a banner in Roundcube during an outage, and
out-of-office replies set on the standby (Roundcube's managesieve plugin).

How the banner learns the state: the sync agent, which runs on the standby next to the portal
and already follows the state in the store (SQLite or PostgreSQL), writes a small JSON status
file (``portal.status_file``) whenever the state changes: the state, when the outage began, and
the administrator's texts (``[portal]``). Nothing secret is in it, so the web server may read it;
the plugin below reads it on every full page, shows nothing unless the state is ``failover`` or
``failback``, and on the login page (which anyone can open) shows ``portal.login_text`` alone.
The portal never needs access to the store or its credentials.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mailcontinuity.config import Config, Endpoint
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.state import State, outage_start

log = logging.getLogger(__name__)

BANNER_PLUGIN_NAME = "mailcontinuity_banner"
BANNER_ELEMENT_ID = "mailcontinuity-banner"
STATUS_FILE_MODE = 0o644
# The plugin reads no more than this: the file holds a state, a time and a few texts.
STATUS_FILE_MAX_BYTES = 65536

BANNER_PLUGIN = """<?php
/**
 * Written by mailcontinuity: a banner while mail runs on the continuity system.
 *
 * Reads $config['mailcontinuity_status_file'] (JSON the sync agent writes at each transition)
 * on every full page. State "normal", a missing or unreadable file: nothing is shown. The login
 * page shows only the administrator's login_text; after login, the outage text, since when,
 * what happens at failback and whom to contact.
 */
class NAME extends rcube_plugin
{
    public $task = '.*';

    public function init()
    {
        $this->add_hook('render_page', [$this, 'render_page']);
    }

    public function render_page($args)
    {
        // Not inside frames (message preview, settings panes): their page shows it already.
        if (rcube_utils::get_input_value('_framed', rcube_utils::INPUT_GPC)) {
            return $args;
        }
        $rcmail = rcmail::get_instance();
        $status = $this->status($rcmail->config->get('mailcontinuity_status_file'));
        if (!$status || !in_array($status['state'] ?? '', ['failover', 'failback'], true)) {
            return $args;
        }
        $lines = [];
        if (empty($_SESSION['user_id'])) {
            $lines[] = (string) ($status['login_text'] ?? '');
        } elseif ($status['state'] === 'failback') {
            $lines[] = (string) ($status['returning_text'] ?? '');
            $lines[] = (string) ($status['contact_line'] ?? '');
        } else {
            $line = (string) ($status['outage_text'] ?? '');
            if (is_numeric($status['since'] ?? null)) {
                $line .= ' Since ' . $rcmail->format_date((int) $status['since'], 'Y-m-d H:i T')
                    . '.';
            }
            $lines[] = $line;
            $lines[] = (string) ($status['failback_text'] ?? '');
            $lines[] = (string) ($status['contact_line'] ?? '');
        }
        $lines = array_values(array_filter(array_map('trim', $lines), 'strlen'));
        if (!$lines) {
            return $args;
        }
        $html = '<div id="ID" role="status" data-state="'
            . htmlspecialchars($status['state'], ENT_QUOTES, 'UTF-8') . '" style="position:fixed;'
            . 'top:0;left:0;right:0;z-index:100000;background:#8a1c00;color:#fff;'
            . 'font:bold 14px/1.4 sans-serif;padding:6px 12px;text-align:center">'
            . implode('<br>', array_map(function ($line) {
                return htmlspecialchars($line, ENT_QUOTES, 'UTF-8');
            }, $lines))
            . '</div><style>body{padding-top:' . (12 + 20 * count($lines)) . 'px !important;'
            . 'box-sizing:border-box}#layout{height:calc(100% - ' . (12 + 20 * count($lines))
            . 'px) !important}</style>';
        $args['content'] = preg_replace('/<body[^>]*>/i', '$0' . $html, $args['content'], 1);
        return $args;
    }

    private function status($file)
    {
        if (!$file || !is_readable($file)) {
            return null;
        }
        $text = @file_get_contents($file, false, null, 0, MAX);
        $status = $text === false ? null : json_decode($text, true);
        return is_array($status) ? $status : null;
    }
}
""".replace("class NAME", f"class {BANNER_PLUGIN_NAME}").replace(
    'id="ID"', f'id="{BANNER_ELEMENT_ID}"').replace(", MAX)", f", {STATUS_FILE_MAX_BYTES})")


def portal_status(config: Config, state: State, outage: dict[str, Any] | None) -> dict[str, Any]:
    """What the banner shows, as the status file holds it. In ``normal`` only the state: the
    texts are there only while they are to be read."""
    if state.name == "normal":
        return {"state": "normal", "since": state.since}
    texts = config.portal
    return {
        "state": state.name,
        "since": outage["start"] if outage else state.since,
        "login_text": texts.login_text,
        "outage_text": texts.outage_text,
        "failback_text": texts.failback_text,
        "returning_text": texts.returning_text,
        "contact_line": f"Contact: {texts.contact}" if texts.contact else "",
    }


def write_portal_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file in one step (the web server never reads half a file), mode
    0644: it holds nothing secret and the web server's user must read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".portal-status-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(status, out, ensure_ascii=False)
        os.chmod(temporary, STATUS_FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class PortalStatus:
    """Keeps ``portal.status_file`` in step with the state (the sync agent calls ``follow``
    on each turn of its loop); written at the first call and at every change only."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.written: tuple[str, float] | None = None

    def follow(self, store: StateStore, state: State) -> None:
        path = self.config.portal.status_file
        if path is None or self.written == (state.name, state.since):
            return
        status = portal_status(self.config, state, outage_start(store))
        try:
            write_portal_status(path, status)
        except OSError as exc:
            # The banner is information, not mail: report it and retry at the next turn.
            log.error("event=portal_status_failed file=%s reason=%r next=check the directory"
                      " exists and is writable (portal.status_file)", path, str(exc))
            return
        self.written = (state.name, state.since)
        log.info("event=portal_status state=%s file=%s", state.name, path)


def roundcube_portal_php(status_file: Path | None, managesieve: Endpoint | None) -> str:
    """Lines for Roundcube's config.inc.php (after ``$config['plugins']`` is set): the banner,
    and the managesieve plugin against the standby's ManageSieve with its out-of-office form
    (``managesieve_vacation = 1``: filters and out-of-office). Reached as Roundcube reaches the
    standby's IMAP: on the standby host itself, which Dovecot counts as secured (local and
    remote address equal), so no TLS is needed on that hop."""
    lines = []
    if status_file is not None:
        lines += [f"$config['plugins'][] = '{BANNER_PLUGIN_NAME}';",
                  f"$config['mailcontinuity_status_file'] = {php_string(str(status_file))};"]
    if managesieve is not None:
        lines += ["$config['plugins'][] = 'managesieve';",
                  f"$config['managesieve_host'] = {php_string(str(managesieve))};",
                  "$config['managesieve_vacation'] = 1;",
                  # Debian's default points at /etc/dovecot/sieve/global, not on the standby.
                  "$config['managesieve_default'] = '';"]
    return "".join(line + "\n" for line in lines)


def php_string(value: str) -> str:
    """A PHP single-quoted string literal of ``value``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

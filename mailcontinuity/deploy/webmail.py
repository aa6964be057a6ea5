"""What the emergency portal (Roundcube) needs so that a guesser slows only themselves.

Dovecot delays logins per client address after failed ones. Every webmail login comes from the
webmail host, so without help one guesser would slow every user's login. Roundcube therefore
connects from an address of its own (``standby.webmail_address``), which Dovecot trusts
(``login_trusted_networks``: that address only), and tells Dovecot each user's real address in
the IMAP ID command before the login (``x-originating-ip``), which Dovecot uses for the penalty
and its logs when, and only when, the client is trusted. Roundcube sends its own ID only after
the login; the plugin below sends one before. Roundcube's own ``login_rate_limit`` (failed
logins per user and minute) comes on top.
"""

from __future__ import annotations

PLUGIN_NAME = "mailcontinuity_client_ip"
LOGIN_RATE_LIMIT = 3

ROUNDCUBE_PLUGIN = f"""<?php
/**
 * Written by mailcontinuity: tell Dovecot the user's own address (IMAP ID x-originating-ip),
 * so that its failed-login penalty falls on the guesser, not on every webmail user.
 */
class {PLUGIN_NAME} extends rcube_plugin
{{
    public function init()
    {{
        $this->add_hook('storage_connect', [$this, 'storage_connect']);
    }}

    public function storage_connect($args)
    {{
        // Before the login (preauth_ident), not after it as Roundcube's own ident: the
        // penalty is decided when the login arrives.
        $args['preauth_ident'] = [
            'name' => 'Roundcube',
            'x-originating-ip' => rcube_utils::remote_addr(),
        ];
        return $args;
    }}
}}
"""


def roundcube_security_php(webmail_address: str | None) -> str:
    """Lines for Roundcube's config.inc.php (after ``$config['plugins']`` is set)."""
    lines = [f"$config['plugins'][] = '{PLUGIN_NAME}';",
             f"$config['login_rate_limit'] = {LOGIN_RATE_LIMIT};"]
    if webmail_address is not None:
        lines.append("$config['imap_conn_options'] = ['socket' => ['bindto' =>"
                     f" '{_bind(webmail_address)}']];")
    return "\n".join(lines) + "\n"


def dovecot_webmail_trust(webmail_address: str | None) -> dict[str, str]:
    """The standby trusts the portal's address, and only it, to report users' addresses."""
    if webmail_address is None:
        return {}
    suffix = "/128" if ":" in webmail_address else "/32"
    return {"login_trusted_networks": webmail_address + suffix}


def _bind(address: str) -> str:
    return f"[{address}]:0" if ":" in address else f"{address}:0"

#!/usr/bin/env bash
# Install the Debian packages mailcontinuity needs to build, test and run its lab.
# Idempotent: installs only what is missing. Needs root (or nothing to install).
set -euo pipefail

packages=(
    postfix
    dovecot-core dovecot-imapd dovecot-lmtpd dovecot-managesieved dovecot-sieve
    dovecot-submissiond
    libmilter-dev gcc make python3-dev python3-venv
    python3-apt systemd
    # swaks speaks STARTTLS only with these (recommended by swaks, which --no-install-recommends
    # skips): the standby hardening tests rely on it.
    swaks libnet-ssleay-perl libio-socket-ssl-perl
    isync
    # ps: tests/lab/test_secrets_exposure.py reads every process's command line with it (a
    # minimal Debian 12, a container, has no procps).
    procps
    knot
    # nft: tests/lab/test_firewall.py loads the rules check-config gives the role into a network
    # namespace of its own (never the host's ruleset); iproute2 brings up its loopback.
    nftables iproute2
    roundcube roundcube-sqlite3 php-cgi php-cli php-sqlite3
    # Roundcube's managesieve plugin (out-of-office on the standby, issue 18):
    # tests/lab/test_portal_banner.py and the lab's webmail need it.
    roundcube-plugins
    chromium
    # Issue 18, credential continuity: the lab's directory is a private slapd (lab/directory.py,
    # tests/lab/test_credentials.py), the standby's Dovecot asks it through dovecot-ldap.
    slapd ldap-utils dovecot-ldap
    # The shared state store of a multi-host site: the lab's part `state` (lab/postgres.py),
    # tests/unit/test_postgres_store.py, the postgres-marked store tests, tests/lab/test_multihost.py.
    postgresql
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; run this script as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The lab runs private Postfix instances; the system one stays unconfigured and stopped.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Roundcube (the lab's emergency portal) on SQLite: no database server to install or run.
# php-cgi is named so that the "php" dependency does not pull in Apache.
printf '%s\n' "roundcube-core roundcube/dbconfig-install boolean true" \
    "roundcube-core roundcube/database-type select sqlite3" | debconf-set-selections
# slapd is only a program for the lab (its own config under the lab directory): no system
# database or configuration, and the system's slapd never started.
echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

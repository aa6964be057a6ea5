"""Issue 20: the nftables rules check-config gives the role, enforced by the real nft in a
network namespace of the test's own (the host's ruleset is never touched).

In the namespace a stand-in listener plays the journal LMTP listener (and the standby relay):
an unprivileged local user is refused, the milter's user gets through.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailcontinuity.config import Config, Endpoint
from mailcontinuity.deploy.firewall import nft_ruleset
from mailcontinuity.lab import Lab

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None,
                                reason="needs nftables and util-linux (install-system-deps.sh)")

SCRIPT = r"""
set -e
ip link set lo up
nft -f "$RULES"
mkfifo "$READY"
python3 - <<'PY' &
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("$HOST", $PORT)); s.listen(16); s.settimeout(30)
with open("$READY", "w") as ready:
    ready.write("listening\n")
try:
    while True:
        c, _ = s.accept(); c.close()
except OSError:
    pass
PY
# Connect only once the listener listens: a connection before that is refused by the kernel
# (errno 111), which reads like the firewall's refusal. A listener that dies first ends read.
read -r state < "$READY"
test "$state" = listening
for pair in nobody:nogroup mailcontinuity:mailcontinuity mail:mail; do
  user=${pair%%:*}
  setpriv --reuid=$user --regid=${pair##*:} --clear-groups "$PY" -c "
import socket
try:
    socket.create_connection(('$HOST', $PORT), timeout=3).close(); print('$user connected')
except OSError as e:
    print('$user refused', e.errno)
" || true
done
kill %1
"""


def enforce(tmp_path: Path, config: Config, host: str, target: Endpoint) -> str:
    rules = nft_ruleset(config, host)  # type: ignore[arg-type]
    assert rules is not None
    (tmp_path / "rules.nft").write_text(rules)
    script = (SCRIPT.replace("$RULES", str(tmp_path / "rules.nft"))
              .replace("$READY", str(tmp_path / "listening"))
              .replace("$HOST", target.host).replace("$PORT", str(target.port))
              .replace("$PY", "/usr/bin/python3" if Path("/usr/bin/python3").exists()
                       else sys.executable))
    result = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True,
                            text=True, timeout=60, check=False)
    assert "connected" in result.stdout or "refused" in result.stdout, result
    return result.stdout


def test_the_journal_lmtp_takes_only_the_milters_user(lab: Lab, tmp_path: Path) -> None:
    standby = lab.config.standby.model_copy(update={"journal_clients": ["127.0.0.1"]})
    config = lab.config.model_copy(update={"standby": standby})
    journal = config.milter.lmtp
    assert journal is not None
    out = enforce(tmp_path, config, "standby", journal)
    assert "nobody refused" in out and "mailcontinuity connected" in out, out


def test_the_probe_source_and_the_relay_are_reserved(lab: Lab, tmp_path: Path) -> None:
    relay = lab.config.gateway.standby_relay
    assert relay is not None
    rules = nft_ruleset(lab.config, "gateway")
    assert rules is not None and f"saddr {lab.config.health.probe_source_address}" in rules
    out = enforce(tmp_path, lab.config, "gateway", relay)
    # The relay is the standby's mail user's alone: neither nobody nor the daemons' user.
    assert "nobody refused" in out and "mailcontinuity refused" in out, out
    assert f"{lab.config.milter.mail_owner} connected" in out, out

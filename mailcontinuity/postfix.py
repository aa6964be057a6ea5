"""Running Postfix's own commands against one Postfix instance (its config directory).

The gateway may be the system instance (``/etc/postfix``) or a private one (the lab); every call
names the directory with ``-c`` so that nothing ever falls back to the system instance by accident.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mailcontinuity.commands import CommandError, run_command


class PostfixError(CommandError):
    """A Postfix command failed; the message carries its output."""


def run_postfix(config_dir: Path, command: str, *args: str, timeout: float = 60) -> str:
    """Run ``command -c config_dir args...`` (postfix, postconf, postmap, postqueue, postsuper)."""
    try:
        return run_command([command, "-c", str(config_dir), *args], timeout,
                           missing_hint="install Debian's postfix package")
    except CommandError as exc:
        raise PostfixError(str(exc)) from None


def write_indexed_map(config_dir: Path, path: Path, lines: list[str]) -> None:
    """Replace a ``hash:`` table atomically: Postfix never sees a half-written map.

    The source is written and ``postmap``-ed under a temporary name, then the ``.db`` and the
    source are renamed into place (rename is atomic within one directory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        run_postfix(config_dir, "postmap", f"hash:{tmp}")
        os.chmod(tmp, 0o644)
        os.chmod(f"{tmp}.db", 0o644)
        os.replace(f"{tmp}.db", f"{path}.db")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}.db")):
            leftover.unlink(missing_ok=True)

"""``lab up --state``: what it refuses before it creates anything (no servers started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.lab import Lab


@pytest.mark.parametrize(("state", "gateways"), [("mysql", None), ("sqlite", 2)])
def test_a_store_the_lab_cannot_have_is_refused_before_anything_is_written(
        tmp_path: Path, state: str, gateways: int | None) -> None:
    with pytest.raises(LabError, match="--state is one of sqlite, postgresql"):
        Lab._create(tmp_path, 3, "dovecot", gateways=gateways, state=state)
    assert list(tmp_path.iterdir()) == []

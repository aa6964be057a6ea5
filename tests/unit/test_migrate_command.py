"""``mailcontinuity migrate``: the deployment's one explicit schema step (the Ansible role runs
it once per site), on each backend."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import Config
from mailcontinuity.store.migrations import MIGRATIONS
from tests.conftest import BASE_CONFIG


def write_config(config: Config, directory: Path) -> Path:
    state = config.state
    lines = ["[state]"]
    if state.url is None:
        lines.append(f"path = {json.dumps(str(state.path))}")
    else:
        lines += [f"url = {json.dumps(state.url)}",
                  f"password_file = {json.dumps(str(state.password_file))}",
                  f"tls_ca_file = {json.dumps(str(state.tls_ca_file))}"]
    path = directory / "migrate.toml"
    path.write_text(BASE_CONFIG + "\n" + "\n".join(lines) + "\n")
    return path


def test_migrate_brings_a_new_store_to_the_latest_schema_and_is_repeatable(
        store_config: Config, tmp_path: Path) -> None:
    path = write_config(store_config, tmp_path)
    for _ in range(2):
        result = CliRunner().invoke(main, ["--config", str(path), "migrate", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["schema_version"] == len(MIGRATIONS)
        assert report["backend"] == store_config.state.backend


def test_migrate_names_the_store_it_cannot_reach(tmp_path: Path) -> None:
    path = tmp_path / "unreachable.toml"
    path.write_text(BASE_CONFIG + '\n[state]\nurl = "postgresql://mailcontinuity@127.0.0.1:1/x"\n'
                    'tls = "none"\nconnect_timeout_seconds = 2\n')
    result = CliRunner().invoke(main, ["--config", str(path), "migrate"])
    assert result.exit_code != 0
    assert "state store postgresql://mailcontinuity@127.0.0.1:1/x" in result.output

"""The CLI's own error paths (no server needed)."""

from __future__ import annotations

import pytest

from serving.cli import build_parser, main


def test_every_documented_command_is_registered():
    help_text = build_parser().format_help()
    for command in ("serve", "up", "eval", "calibrate", "kv-plan", "purge"):
        assert command in help_text


def test_serve_with_a_bad_config_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis:\n  urll: redis://x\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "redis.urll" in capsys.readouterr().err


def test_up_with_a_missing_config_file_is_a_clear_error(tmp_path, capsys):
    assert main(["up", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_purge_without_admin_key_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("CACHESTACK_ADMIN_KEY", raising=False)
    assert main(["purge", "--namespace", "default"]) == 2
    assert "admin key" in capsys.readouterr().err


def test_purge_against_nothing_listening_fails_cleanly(monkeypatch, capsys):
    monkeypatch.setenv("CACHESTACK_ADMIN_KEY", "k")
    assert main(["purge", "--url", "http://127.0.0.1:9", "--tenant", "a"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2

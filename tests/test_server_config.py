"""`embedkit serve` settings: YAML config, command-line overrides, API key from the environment."""

from __future__ import annotations

import pytest

from embedkit.cli import build_parser
from embedkit.errors import EmbedkitError


def parse(*argv: str):
    from embedkit.cli.serve import config_from_args

    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_bind_loopback_and_speak_search_r1():
    config = parse("indexes/x")
    assert (config.host, config.port, config.default_topk, config.api_key) == ("127.0.0.1", 8000, 3, None)
    assert config.batching.enabled and config.limits.max_topk == 100


def test_yaml_then_command_line_overrides(tmp_path, monkeypatch):
    path = tmp_path / "serve.yaml"
    path.write_text("index: indexes/a\nbm25: indexes/b\nport: 9000\nlimits:\n  max_topk: 7\n"
                    "batching:\n  max_wait_ms: 9\nfusion:\n  method: interpolate\n")
    config = parse("--config", str(path), "--port", "9100", "--max-queries", "3", "--no-batching", "--alpha", "0.3")
    assert (config.index, config.bm25, config.port) == ("indexes/a", "indexes/b", 9100)
    assert (config.limits.max_topk, config.limits.max_queries) == (7, 3)
    assert (config.batching.enabled, config.batching.max_wait_ms) == (False, 9)
    assert (config.fusion.method, config.fusion.alpha) == ("interpolate", 0.3)
    monkeypatch.setenv("EMBEDKIT_API_KEY", "from-env")
    assert config.resolved_api_key() == "from-env"
    assert parse("x", "--api-key", "flag").resolved_api_key() == "flag"


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(EmbedkitError, match="nothing to serve"):
        parse()
    with pytest.raises(EmbedkitError, match="max_topk"):
        parse("x", "--max-topk", "0")
    bad = tmp_path / "bad.yaml"
    bad.write_text("index: x\nunknown_setting: 1\n")
    with pytest.raises(EmbedkitError, match="unknown_setting"):
        parse("--config", str(bad))

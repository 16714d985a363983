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
    # Search-R1 posts train_batch_size x n_agent = 2,560 queries at once: the default must be far above that.
    assert config.limits.max_queries == 100_000 and config.batching.max_batch_size == 256
    assert (config.backend, config.mmap, config.reload.enabled) == ("faiss", False, True)
    assert config.encoder_backend == "torch"
    assert parse("x", "--encoder-backend", "onnx").encoder_backend == "onnx"
    assert parse("x", "--set", "encoder_backend=onnx").encoder_backend == "onnx"


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


def test_set_overrides_between_yaml_and_flags(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("index: indexes/a\nlimits:\n  max_topk: 7\nbackend: torch\n")
    config = parse("--config", str(path), "--set", "limits.max_topk=9", "--set", "batching.max_wait_ms=1.5",
                   "--set", "reload.poll_seconds=0.25", "--mmap")
    assert (config.limits.max_topk, config.batching.max_wait_ms, config.reload.poll_seconds) == (9, 1.5, 0.25)
    assert (config.backend, config.mmap) == ("torch", True)
    # a dedicated flag wins over --set
    assert parse("--config", str(path), "--set", "limits.max_topk=9", "--max-topk", "11").limits.max_topk == 11
    assert parse("x", "--set", "backend=faiss-gpu", "--no-reload").reload.enabled is False
    with pytest.raises(EmbedkitError, match="backend"):
        parse("x", "--set", "backend=cuda")
    with pytest.raises(EmbedkitError, match="KEY=VALUE"):
        parse("x", "--set", "limits.max_topk")


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(EmbedkitError, match="nothing to serve"):
        parse()
    with pytest.raises(EmbedkitError, match="max_topk"):
        parse("x", "--max-topk", "0")
    bad = tmp_path / "bad.yaml"
    bad.write_text("index: x\nunknown_setting: 1\n")
    with pytest.raises(EmbedkitError, match="unknown_setting"):
        parse("--config", str(bad))


def test_the_example_config_loads_with_the_defaults_it_documents():
    from pathlib import Path

    from embedkit.server.config import ServerConfig

    example = ServerConfig.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "serve.yaml")
    defaults = ServerConfig(index=example.index)
    assert example.limits == defaults.limits and example.batching == defaults.batching
    assert example.reload == defaults.reload and example.backend == defaults.backend

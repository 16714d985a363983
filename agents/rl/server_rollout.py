"""Rollouts from an OpenAI-compatible inference server (vLLM, SGLang) serving the policy.

    engine = OpenAIRolloutEngine(tokenizer, settings, tool, ServerConfig(base_url="http://gpu:8000/v1"))
    trajectories = engine.sample(prompts, group_size=8)      # same multi-turn logic as the HF engine
    engine.sync_weights(policy)                               # after each update: save + ask the server to reload

Prompts go as token ids to `/v1/completions`; the completion text is tokenised back with the policy's
tokenizer (the trainer recomputes every log-prob itself, so the update stays exact for the tokens it
trains on). Stop strings are kept in the output (vLLM's `include_stop_str_in_output`, SGLang's
`no_stop_trim`, else vLLM's `stop_reason`), so a closed `</search>` reaches the tool.

Weight sync (`server.weight_sync: save_reload`): the policy is saved to `sync_dir` and
`POST <root>/update_weights_from_disk {"model_path": sync_dir}` (`server.reload_path`) asks the server to load
it. SGLang has that endpoint (`python -m sglang.launch_server --model-path <sync_dir>`). vLLM's server has no
load-from-disk endpoint: its RL weight transfer (`VLLM_SERVER_DEV_MODE=1`, `--weight-transfer-config`,
`POST /init_weight_transfer_engine`, `/update_weights`) sends tensors over NCCL or CUDA IPC, which this engine
does not speak; with vLLM put a reload endpoint in front (`reload_path`) or use `weight_sync: none` for a frozen
policy. `tests/test_agentic_r_openai_rollout.py` runs Agentic-R's agent update against a real server process
with SGLang's endpoint.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agents.rl.rollout import RolloutEngine, RolloutSettings, Tool
from embedkit.errors import EmbedkitError


class OpenAIRolloutEngine(RolloutEngine):
    """A `RolloutEngine` whose generation calls an OpenAI-compatible completions endpoint."""

    def __init__(self, tokenizer: Any, settings: RolloutSettings | None, tool: Tool | None, server: Any, *,
                 seed: int = 0, sync_dir: str | Path | None = None) -> None:  # fmt: skip
        import httpx

        super().__init__(None, tokenizer, settings, tool, seed=seed)
        self.server = server
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        self.client = httpx.Client(timeout=server.timeout_s, headers=headers)
        self.sync_dir = Path(sync_dir or server.sync_dir or "served-policy")
        self.syncs = 0

    @property
    def root_url(self) -> str:
        base = self.server.base_url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    def _complete(self, ids: list[int], max_new_tokens: int, stops: list[str], seed: int) -> list[int]:
        s = self.settings
        body: dict[str, Any] = {"model": self.server.model, "prompt": ids, "max_tokens": max_new_tokens,
                                "temperature": s.temperature, "top_p": s.top_p, "n": 1, "seed": seed,
                                "include_stop_str_in_output": True, "no_stop_trim": True,
                                "skip_special_tokens": False}  # fmt: skip
        if s.top_k > 0:
            body["top_k"] = s.top_k
        if stops:
            body["stop"] = stops
        try:
            response = self.client.post(self.server.base_url.rstrip("/") + "/completions", json=body)
            response.raise_for_status()
            choice = response.json()["choices"][0]
        except Exception as error:  # noqa: BLE001 - any transport or protocol problem is a user-facing error
            raise EmbedkitError(f"rollout server {self.server.base_url}: {error}") from None
        text = choice.get("text", "")
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, str) and not text.endswith(stop_reason):
            text += stop_reason
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        stopped_on_string = any(text.rstrip().endswith(x) for x in stops)
        if choice.get("finish_reason") == "stop" and not stopped_on_string and self.eos_id is not None:
            tokens.append(self.eos_id)  # the server stopped on EOS, which the text does not show
        return tokens[:max_new_tokens]

    def _generate(self, contexts: list[list[int]], max_new_tokens: int, stops: list[str]) -> list[list[int]]:
        seeds = [self.rng.randrange(2**31) for _ in contexts]
        with ThreadPoolExecutor(max_workers=max(1, self.server.concurrency)) as pool:
            pieces = list(pool.map(lambda a: self._complete(a[0], max_new_tokens, stops, a[1]),
                                   zip(contexts, seeds, strict=True)))  # fmt: skip
        return [self._cut(piece, stops) for piece in pieces]

    def sync_weights(self, policy: Any) -> None:
        """Save the policy where the server can read it and ask the server to load it."""
        if self.server.weight_sync == "none":
            return
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        policy.save_pretrained(self.sync_dir)
        self.tokenizer.save_pretrained(self.sync_dir)
        try:
            response = self.client.post(self.root_url + self.server.reload_path,
                                        json={"model_path": str(self.sync_dir.resolve())})  # fmt: skip
            response.raise_for_status()
        except Exception as error:  # noqa: BLE001
            raise EmbedkitError(f"rollout server {self.root_url}: weight reload failed: {error}") from None
        self.syncs += 1

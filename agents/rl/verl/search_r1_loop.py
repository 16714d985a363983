"""verl agent loop `search_r1_agent`: Search-R1's own token stream, searching through the embedkit tool.

    import agents.rl.verl.search_r1_loop   # registers the name in verl's agent-loop registry
    # verl overrides: actor_rollout_ref.rollout.agent.default_agent_loop=search_r1_agent
    #                 actor_rollout_ref.rollout.multi_turn.tool_config_path=configs/verl/search_tool.yaml
    # (or the row's agent_name: `embedkit rl verl-data --agent-loop search_r1_agent`)

Why a loop of our own: verl's stock `ToolAgentLoop` runs a tool-calling search agent (the `tool_agent` rows of
`agents.rl.verl.data`), but it cannot run Search-R1's protocol, which Search-R1 and Agentic-R checkpoints are
trained on: the model writes `<search> query </search>`, generation stops there, and the passages are appended
as `\\n\\n<information>…</information>\\n\\n` *inside the same assistant turn*, which the model then continues.
`ToolAgentLoop` has parsers only for tool-call formats (hermes, gpt-oss, …), stops only on single tokens
(`</search>` is several tokens in Qwen's vocabulary), and always adds tool output as a new chat turn through
the chat template, so neither the text nor the tokens would be Search-R1's.

The loop, per question: the chat template on the first user message (as Search-R1 prompts instruct models),
then up to `multi_turn.max_assistant_turns` generations with stop strings `</search>` and `</answer>`. Each
generation is cut after its first complete `<search>…</search>` or `<answer>…</answer>` (Search-R1's
post-processing; the cut is made on tokens, so the kept tokens and log-probs are the sampled ones). A search runs
the embedkit tool (same settings, Agentic-R question, retries) and its `<information>` block is appended with
loss mask 0 (Search-R1's state masking); output with neither tag gets an "invalid action" note as Search-R1
does (embedkit's wording, `agents.search_agent.config.DEFAULT_INVALID_FEEDBACK`, mask 0); an answer ends the session. The last allowed
generation runs no search, as Search-R1's final rollout. A closing tag the server left out (some servers drop the
stop string) is appended with mask 0. The text the model sees is exactly what `embedkit agent run --prompt-mode
search_r1` builds, so a policy trained here is evaluated on the same stream.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, ToolListWrap, register
from verl.utils.profiler import simple_timer

from agents.rl.verl.data import TOOL_NAME
from agents.search_agent.config import DEFAULT_INVALID_FEEDBACK
from agents.search_agent.format import (
    ANSWER_RE,
    INFORMATION_OPEN,
    SEARCH_RE,
    information_block,
    parse_action,
    restore_stop,
)
from embedkit.errors import EmbedkitError

log = logging.getLogger(__name__)

AGENT_NAME = "search_r1_agent"
STOP = ["</search>", "</answer>"]


@register(AGENT_NAME)
class SearchR1AgentLoop(AgentLoopBase):
    """Search-R1's `<search>` / `<information>` / `<answer>` loop on verl's rollout server."""

    def __init__(self, *args: Any, tools: ToolListWrap | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        by_name = {tool.name: tool for tool in (tools.tools if tools else [])}
        if TOOL_NAME not in by_name:
            raise EmbedkitError(f"the {AGENT_NAME} loop needs a tool named {TOOL_NAME!r}: set "
                                "actor_rollout_ref.rollout.multi_turn.tool_config_path=configs/verl/search_tool.yaml")  # fmt: skip
        self.tool = by_name[TOOL_NAME]
        multi_turn = self.rollout_config.multi_turn
        self.max_generations = int(multi_turn.max_assistant_turns or 5)
        self.max_observation_chars = int(multi_turn.max_tool_response_length)
        self.response_length = int(self.rollout_config.response_length)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        messages = list(kwargs["raw_prompt"])
        tools_kwargs = kwargs.get("tools_kwargs") or {}
        create_kwargs = (tools_kwargs.get(TOOL_NAME) or {}).get("create_kwargs") or {}
        prompt_ids = await self.ct_build_initial_tokens(messages)
        request_id = uuid4().hex
        metrics: dict[str, Any] = {}
        ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        generations = searches = 0
        server_logprobs = True
        while generations < self.max_generations and len(ids) < self.response_length:
            budget = self.response_length - len(ids)
            params = {**sampling_params, "stop": STOP, "max_tokens": budget}
            with simple_timer("generate_sequences", metrics):
                output = await self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids + ids,
                                                            sampling_params=params)  # fmt: skip
            generations += 1
            if not output.token_ids:  # aborted
                break
            server_logprobs = server_logprobs and output.log_probs is not None
            turn, turn_logprobs = self._cut_after_action(list(output.token_ids), output.log_probs)
            ids += turn
            mask += [1] * len(turn)
            logprobs += turn_logprobs
            text = self.tokenizer.decode(turn, skip_special_tokens=True)
            restored = restore_stop(text)
            if restored != text:  # the server dropped the stop string: put it back, not as the model's tokens
                self._append(ids, mask, logprobs, restored[len(text):])
            action = parse_action(restored)
            if action.kind == "answer" or generations >= self.max_generations:
                break
            if action.kind == "search":
                searches += 1
                with simple_timer("tool_calls", metrics):
                    observation = await self._search(action.content, create_kwargs)
            else:
                observation = DEFAULT_INVALID_FEEDBACK
            self._append(ids, mask, logprobs, observation)
        limit = self.response_length
        ids, mask, logprobs = ids[:limit], mask[:limit], logprobs[:limit]
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=ids, response_mask=mask,
            response_logprobs=logprobs if server_logprobs and generations else None,
            num_turns=generations + 1, metrics=metrics,
            extra_fields={"turn_scores": [], "tool_rewards": [], "search_calls": searches},
        )  # fmt: skip

    def _cut_after_action(self, token_ids: list[int],
                          token_logprobs: list[float] | None) -> tuple[list[int], list[float]]:  # fmt: skip
        """The shortest prefix whose text holds a complete `<search>…</search>` or `<answer>…</answer>` (all of it
        when none does, less a final end-of-sequence token, which Search-R1's decoding drops too)."""
        def complete(n: int) -> bool:
            text = self.tokenizer.decode(token_ids[:n], skip_special_tokens=True)
            return bool(SEARCH_RE.search(text) or ANSWER_RE.search(text))

        end = len(token_ids)
        if complete(end):
            low, high = 1, end  # complete() only turns true as the prefix grows: binary search
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if complete(middle) else (middle + 1, high)
            end = low
        elif token_ids and token_ids[-1] == self.tokenizer.eos_token_id:
            end -= 1
        kept_logprobs = list(token_logprobs[:end]) if token_logprobs else [0.0] * end
        return token_ids[:end], kept_logprobs

    async def _search(self, query: str, create_kwargs: dict[str, Any]) -> str:
        """The tool's answer as an `<information>` block (the tool never raises; failures are its text)."""
        instance_id, _ = await self.tool.create(create_kwargs=create_kwargs)
        try:
            response, _, _ = await self.tool.execute(instance_id, {"query": query})
        finally:
            await self.tool.release(instance_id)
        text = response.text or ""
        if len(text) > self.max_observation_chars:
            text = text[: self.max_observation_chars]
        return text if text.lstrip().startswith(INFORMATION_OPEN) else information_block(text)

    def _append(self, ids: list[int], mask: list[int], logprobs: list[float], text: str) -> None:
        """Text the environment adds to the turn: tokenized alone, outside the loss (mask 0)."""
        added = self.tokenizer.encode(text, add_special_tokens=False)
        ids += added
        mask += [0] * len(added)
        logprobs += [0.0] * len(added)


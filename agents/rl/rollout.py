"""Rollouts with HF `generate`: single- or multi-turn, with a tool callback whose output is masked out of
the loss, and two strategies (registry `ROLLOUT_STRATEGIES`): `sample` (G independent responses per prompt)
and `rose` (responses one at a time, branching at the highest semantic-entropy position).

    engine = RolloutEngine(model, tokenizer, RolloutSettings(max_new_tokens=64), tool=my_search)
    trajectories = engine.sample(["question: …"], group_size=8)
    for t in trajectories: t.response_ids, t.loss_mask  # loss_mask is 0 on tool-injected tokens

A tool is any `(query: str) -> str`: when the policy closes `<search> … </search>`, the query between the
tags goes to the tool and its (stripped) result, wrapped in `information_template` (by default the template
`SearchAgent` uses, `agents.search_agent.format.INFORMATION_TEMPLATE`), is appended before generation resumes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from agents.rl.registry import Registry
from agents.search_agent.format import INFORMATION_TEMPLATE

Tool = Callable[[str], str]


class RolloutSettings(BaseModel):
    """How responses are generated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = 64  # budget for the whole response, tool output included
    max_turn_tokens: int | None = None  # per generate call (default: the remaining budget)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_turns: int = 2  # tool calls allowed per response
    search_open: str = "<search>"
    search_close: str = "</search>"
    answer_close: str | None = "</answer>"  # stop a response when it closes its answer
    information_template: str = INFORMATION_TEMPLATE  # one template for training and evaluation (Search-R1's)
    chat_template: bool = False  # wrap each prompt as a user turn with the tokenizer's chat template
    # ROSE
    rose_epsilon: float = 0.5
    rose_top: int = 20


@dataclass
class Trajectory:
    """One response: policy tokens (loss_mask 1) interleaved with tool output (loss_mask 0)."""

    prompt: str
    prompt_ids: list[int]
    group: int  # index of the prompt in the rollout batch
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    turns: int = 0
    finished: bool = False  # stopped by EOS or the answer tag (not by the length budget)
    parent: int | None = None  # ROSE: index (within the group) of the response this one branched from
    branch_position: int = 0
    text: str = ""
    tool_calls: list[str] = field(default_factory=list)


class RolloutEngine:
    """Generates trajectories with an HF causal LM (any `generate`-capable model, unwrapped)."""

    def __init__(self, model: Any, tokenizer: Any, settings: RolloutSettings | None = None,
                 tool: Tool | None = None, *, seed: int = 0) -> None:  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or RolloutSettings()
        self.tool = tool
        self.rng = random.Random(seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self._search_re = re.compile(re.escape(self.settings.search_open) + r"(.*?)" + re.escape(self.settings.search_close), re.DOTALL)

    # -- public API ------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.settings.chat_template)

    def sample(self, prompts: Sequence[str], group_size: int) -> list[Trajectory]:
        """`group_size` independent responses per prompt (groups are contiguous in the result)."""
        states = [Trajectory(prompt=p, prompt_ids=self.encode_prompt(p), group=g)
                  for g, p in enumerate(prompts) for _ in range(group_size)]  # fmt: skip
        self.continue_(states)
        return states

    def continue_(self, states: list[Trajectory]) -> None:
        """Generate until every state is finished or out of budget (multi-turn with the tool)."""
        s = self.settings
        active = [st for st in states if not st.finished and len(st.response_ids) < s.max_new_tokens]
        while active:
            stops = [x for x in (s.answer_close, s.search_close if self.tool else None) if x]
            budget = max(s.max_new_tokens - len(st.response_ids) for st in active)
            if s.max_turn_tokens:
                budget = min(budget, s.max_turn_tokens)
            pieces = self._generate([st.prompt_ids + st.response_ids for st in active], budget, stops)
            still: list[Trajectory] = []
            calls: list[Trajectory] = []
            for st, piece in zip(active, pieces, strict=True):
                piece = piece[: s.max_new_tokens - len(st.response_ids)]
                st.response_ids += piece
                st.loss_mask += [1] * len(piece)
                text = self.tokenizer.decode(st.response_ids, skip_special_tokens=True)
                if (piece and piece[-1] == self.eos_id) or (s.answer_close and text.rstrip().endswith(s.answer_close)):
                    st.finished = True
                elif (self.tool and text.rstrip().endswith(s.search_close) and st.turns < s.max_turns
                      and self._search_re.findall(text)):  # a close tag without an open one ends the response
                    st.tool_calls.append(self._search_re.findall(text)[-1].strip())
                    calls.append(st)
                elif len(st.response_ids) < s.max_new_tokens and piece and s.max_turn_tokens:
                    still.append(st)  # per-turn budget hit: keep going
            results = self._call_tool([st.tool_calls[-1] for st in calls])
            for st, result in zip(calls, results, strict=True):
                info = s.information_template.format(result=result.strip())
                info_ids = self.tokenizer.encode(info, add_special_tokens=False)
                info_ids = info_ids[: s.max_new_tokens - len(st.response_ids)]
                st.response_ids += info_ids
                st.loss_mask += [0] * len(info_ids)
                st.turns += 1
                if len(st.response_ids) < s.max_new_tokens:
                    still.append(st)
            active = still
        for st in states:
            st.text = self.tokenizer.decode(st.response_ids, skip_special_tokens=True)

    def _call_tool(self, queries: list[str]) -> list[str]:
        """Each distinct query once; a tool with a `batch` attribute (list → list) gets them in one call."""
        if not queries:
            return []
        unique = list(dict.fromkeys(queries))
        tool: Any = self.tool
        batch = getattr(tool, "batch", None)
        answers = batch(unique) if callable(batch) else [tool(q) for q in unique]
        found = dict(zip(unique, answers, strict=True))
        return [found[q] for q in queries]

    # -- generation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, contexts: list[list[int]], max_new_tokens: int, stops: list[str]) -> list[list[int]]:
        """Sample continuations, each cut after EOS or the first stop string it produces."""
        s = self.settings
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=self.pad_id,
                                      eos_token_id=self.eos_id)  # fmt: skip
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        else:
            kwargs.update(do_sample=False)
        if stops:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(self.tokenizer, stops, width)])
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        if was_training:
            self.model.train()
        return [self._cut(row.tolist(), stops) for row in out[:, width:].cpu()]

    def _cut(self, tokens: list[int], stops: list[str]) -> list[int]:
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id) + 1]
        else:  # trailing pads of a row that stopped on a stop string
            while tokens and tokens[-1] == self.pad_id:
                tokens.pop()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if not any(stop in text for stop in stops):
            return tokens
        lo, hi = 1, len(tokens)  # smallest prefix whose text contains a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            prefix = self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if any(stop in prefix for stop in stops):
                hi = mid
            else:
                lo = mid + 1
        return tokens[:lo]


def encode_prompt(tokenizer: Any, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of a prompt: plain text, or one user turn with the generation prompt of the chat template."""
    if not chat_template:
        return tokenizer.encode(prompt, add_special_tokens=True)
    if not getattr(tokenizer, "chat_template", None):
        from embedkit.errors import EmbedkitError

        raise EmbedkitError("rollout.settings.chat_template is on but the tokenizer has no chat template")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True)  # fmt: skip
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


class StopOnStrings:
    """Per-row stop when the generated text ends with a stop string (cheaper than HF's `stop_strings`,
    which rebuilds vocabulary tables on every `generate` call)."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_width = prompt_width
        self.window = max(len(s) for s in stops) + 2  # tokens are at least one character

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        tails = input_ids[:, max(self.prompt_width, input_ids.shape[1] - self.window) :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(t.rstrip().endswith(s) for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


RolloutFn = Callable[..., list[Trajectory]]
ROLLOUT_STRATEGIES: Registry[RolloutFn] = Registry("rollout strategy")


@ROLLOUT_STRATEGIES.register("sample")
def plain_sampling(engine: RolloutEngine, prompts: Sequence[str], group_size: int) -> list[Trajectory]:
    return engine.sample(prompts, group_size)


@ROLLOUT_STRATEGIES.register("rose")
def rose_sampling(engine: RolloutEngine, prompts: Sequence[str], group_size: int) -> list[Trajectory]:
    """ROSE: the g-th response of every prompt starts at the root with probability ε, else branches at the
    maximal-semantic-entropy (response, position) among that prompt's earlier responses."""
    from agents.rl.rose import choose_branch, semantic_entropy

    embeddings = engine.model.get_input_embeddings().weight.detach()
    groups: list[list[Trajectory]] = [[] for _ in prompts]
    se: list[list[torch.Tensor]] = [[] for _ in prompts]
    for _ in range(group_size):
        batch = []
        for g, prompt in enumerate(prompts):
            earlier = groups[g]
            branch = choose_branch(se[g], [torch.tensor(t.loss_mask) for t in earlier], engine.rng,
                                   engine.settings.rose_epsilon)  # fmt: skip
            state = Trajectory(prompt=prompt, prompt_ids=engine.encode_prompt(prompt), group=g)
            if branch is not None:
                parent, k = branch
                src = earlier[parent]
                state.response_ids, state.loss_mask = src.response_ids[:k], src.loss_mask[:k]
                state.parent, state.branch_position = parent, k
                state.turns = sum(1 for a, b in zip(state.loss_mask, state.loss_mask[1:], strict=False) if a == 1 and b == 0)
            batch.append(state)
        engine.continue_(batch)
        logits = response_logits(engine.model, batch, engine.pad_id)
        for g, state in enumerate(batch):
            length = len(state.response_ids)
            se[g].append(semantic_entropy(logits[g, :length], embeddings, engine.settings.rose_top).cpu())
            groups[g].append(state)
    return [t for group in groups for t in group]


def pack(trajectories: Sequence[Trajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a forward pass plus response-aligned masks.

    input_ids/attention_mask [N, S]; response_index [N, T] (position in the row of each response token's
    logits, i.e. one before the token); response_ids, response_mask (1 = policy token), valid [N, T].
    """
    n = len(trajectories)
    width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    t_max = max(1, max(len(t.response_ids) for t in trajectories))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    index = torch.zeros((n, t_max), dtype=torch.long)
    response_ids = torch.full((n, t_max), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, t_max))
    valid = torch.zeros((n, t_max))
    for row, t in enumerate(trajectories):
        ids = t.prompt_ids + t.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        length = len(t.response_ids)
        if length:
            index[row, :length] = torch.arange(len(t.prompt_ids) - 1, len(t.prompt_ids) - 1 + length)
            response_ids[row, :length] = torch.tensor(t.response_ids, dtype=torch.long)
            response_mask[row, :length] = torch.tensor(t.loss_mask, dtype=torch.float)
            valid[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "response_index": index,
            "response_ids": response_ids, "response_mask": response_mask, "valid": valid}  # fmt: skip


def gather_response(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick the response positions out of [N, S, ...] with index [N, T] → [N, T, ...]."""
    if hidden.dim() == 2:
        return torch.gather(hidden, 1, index)
    return torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


@torch.no_grad()
def response_logits(model: Any, trajectories: Sequence[Trajectory], pad_id: int) -> torch.Tensor:
    """Logits predicting every response token, [N, T, V] (no gradient)."""
    batch = pack(trajectories, pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    return gather_response(logits, batch["response_index"].to(device))

"""ROSE inside stock verl 0.9.1: branching rollouts as a verl agent loop, the tree advantage as a verl estimator.

    import agents.rl.verl.rose   # registers them (agents.rl.verl.plugin, i.e. the launcher, imports it); then:
    #   actor_rollout_ref.rollout.agent.default_agent_loop=embedkit_rose
    #   actor_rollout_ref.rollout.agent.agent_loop_config_path=agents/rl/verl/rose_agent_loop.yaml
    #   algorithm.adv_estimator=embedkit_rose  trainer.v1.trainer_mode=embedkit_rose
    #   (optional) +algorithm.rose_length_alpha=1.0

Rollouts (`RoseAgentLoop`, agent loop `embedkit_rose`). verl runs `rollout.n` sessions of a prompt as
concurrent agent loops in one worker process. The sessions of one prompt (same `uid`) build one tree, one
response at a time as the official ROSE-rl rollout does: the first is sampled from the prompt; each later one
starts at the prompt with probability ε, else keeps the prefix of the earlier response with the highest
semantic entropy before that position and resamples from it (`agents.rl.rose.choose_branch`). Generation goes
through verl's rollout server interface only: `server_manager.generate(prompt_ids=prompt + prefix, …)` for the
continuation, then one scoring call (`max_tokens=1`, `prompt_logprobs=top`, as verl's distillation teacher asks
for top-k log-probs) for the top candidates at every new position. Each output carries the tree in
`extra_fields`: `rose_tree`, `rose_node` (order in the tree), `rose_parent` (node, −1 = from the prompt) and
`rose_branch_pos` (−1 for a first response, as the official metadata).

Advantages (estimator `embedkit_rose`). verl 0.9.1's `compute_advantage` hands a registered estimator only
`token_level_rewards`, `response_mask`, `config` and the prompt `uid` (`non_tensor_batch` goes only to `gdpo`),
and the v1 trainer's `_compute_advantage` reads only uid, masks, scores, log-probs and values from its
TransferQueue, so the tree never reaches an estimator by itself (the official fork edits `compute_advantage` to
pass `tree_metadata`). The hook used here is verl's trainer registry: `register_trainer("embedkit_rose")`
registers `RoseTrainer`, verl's sync trainer whose `_compute_advantage` reads the outputs' `extra_fields` for
the batch's keys from the TransferQueue and runs verl's own `_compute_advantage` inside `rose_trees(...)`,
where the estimator finds them. Under embedkit's `embedkit_*` trainer modes (agents.rl.verl.trainer), which
publish the batch keys, the estimator reads the trees itself. Under any other trainer it refuses with the
reason. verl's older trainer (`trainer.use_v1=false`) keeps the fields in `non_tensor_batch`
(`tree_rows_from_batch`), but has no registry to put a hook in.

Differences from the official rollout, by design of the server interface: the candidates' log-probs come from
the scoring call (the raw model distribution, as vLLM's sampling log-probs are by default), and the embedding
rows are read once per worker from the checkpoint (`embeddings_path`, default the model folder), not from the
live rollout weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import random
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transfer_queue as tq
from pydantic import BaseModel, ConfigDict, Field
from verl.experimental.agent_loop import agent_loop
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from agents.rl.rose import choose_branch, segment_advantages, semantic_entropy_from_top
from agents.rl.verl.trainer import VerlModeName
from embedkit.config import validate_config
from embedkit.errors import DataFormatError, EmbedkitError

ROSE_NAME = "embedkit_rose"  # the agent loop, the advantage estimator and the trainer share it
TREE_FIELDS = ("rose_tree", "rose_node", "rose_parent", "rose_branch_pos")
MAX_OPEN_TREES = 4096  # a tree whose sessions never all arrive (a group split across workers) is dropped


class RoseLoopSettings(BaseModel):  # the YAML entry's `name` and `_target_` are verl's, not settings
    """The agent loop's settings (keys of its entry in the agent-loop YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(0.5, ge=0.0, le=1.0)  # probability that a later response starts at the prompt
    top: int = Field(20, ge=2)  # candidates per position for the semantic entropy (official cosine_top_k)
    embeddings_path: str | None = None  # folder or .safetensors file with the input embeddings
    seed: int | None = None  # seeds the ε draws of each tree (None: fresh randomness)


def check_rose_config(config: Any) -> RoseLoopSettings | None:
    """Check, before any worker starts, the `embedkit_rose` entry of the agent-loop YAML that verl's workers
    will build the loop from; returns its settings (None when no agent-loop YAML is configured)."""
    import yaml

    path = config.actor_rollout_ref.rollout.agent.get("agent_loop_config_path")
    if not path:
        return None
    from verl.utils.import_utils import resolve_config_path

    try:
        resolved = resolve_config_path(str(path))
        entries = yaml.safe_load(Path(resolved).read_text(encoding="utf-8"))
    except (OSError, FileNotFoundError, yaml.YAMLError) as error:
        raise DataFormatError(f"cannot read the agent-loop config: {error}", path=str(path)) from None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, Mapping) and entry.get("name") == ROSE_NAME:
            settings = {k: v for k, v in entry.items() if k not in ("name", "_target_")}
            return validate_config(RoseLoopSettings, settings, path=f"{resolved} (entry {i})")
    raise DataFormatError(f"no agent loop named {ROSE_NAME} (a list of entries with name and _target_)",
                          path=str(path))  # fmt: skip


class TreeRow(NamedTuple):
    """One output's place in its tree."""

    tree: str
    node: int
    parent: int  # node it branched from, -1 = from the prompt
    branch_pos: int


# -- rollouts -------------------------------------------------------------------------------------------------
@dataclass
class _Node:
    response_ids: list[int]
    log_probs: list[float] | None
    se: list[float]


@dataclass
class _Tree:
    id: str
    rng: random.Random
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    nodes: list[_Node] = field(default_factory=list)


_TREES: OrderedDict[tuple[str, ...], _Tree] = OrderedDict()


def _open_tree(key: tuple[str, ...], seed: int | None) -> _Tree:
    tree = _TREES.get(key)
    if tree is None:
        tree = _Tree(id=uuid.uuid4().hex, rng=random.Random(seed))
        _TREES[key] = tree
        while len(_TREES) > MAX_OPEN_TREES:
            _TREES.popitem(last=False)
    return tree


@functools.lru_cache(maxsize=4)
def load_input_embeddings(path: str) -> torch.Tensor:
    """The input-embedding matrix [V, D] of a checkpoint folder (or one .safetensors file), read alone."""
    from safetensors import safe_open

    root = Path(path)
    files = [root] if root.is_file() else sorted(root.glob("*.safetensors"))
    index = root / "model.safetensors.index.json"
    if root.is_dir() and index.exists():
        names = json.loads(index.read_text())["weight_map"]
        files = [root / f for k, f in names.items() if k.endswith("embed_tokens.weight")][:1] or files
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight")):
                    return handle.get_tensor(key).float()
    raise EmbedkitError(f"ROSE needs the policy's input embeddings: no *.safetensors under '{path}' holds "
                        "an embed_tokens weight; set embeddings_path in the embedkit_rose agent-loop entry")  # fmt: skip


def position_entropies(extra_fields: Mapping[str, Any], start: int, tokens: Sequence[int],
                       sampled_logprobs: Sequence[float] | None, embeddings: torch.Tensor) -> list[float]:  # fmt: skip
    """Semantic entropy of each of `tokens`, which sit at positions start, start+1, … of the scored sequence,
    from a scoring call's `prompt_ids` / `prompt_logprobs` (entry j predicts token j+1). H also counts the
    sampled token when it is not among the top candidates (its log-prob from the generation call)."""
    if not tokens:
        return []
    if "prompt_logprobs" not in extra_fields or "prompt_ids" not in extra_fields:
        raise EmbedkitError("the rollout server returned no prompt_logprobs for ROSE's scoring call "
                            "(verl's vLLM and SGLang servers do; another server must support prompt_logprobs)")  # fmt: skip
    rows = range(start - 1, start - 1 + len(tokens))
    ids = torch.tensor([list(extra_fields["prompt_ids"][j]) for j in rows], dtype=torch.long)
    logp = torch.tensor([list(extra_fields["prompt_logprobs"][j]) for j in rows], dtype=torch.float32)
    extra = torch.full((len(tokens),), float("nan"))
    if sampled_logprobs is not None:
        for t, token in enumerate(tokens):
            if int(token) not in ids[t].tolist():
                extra[t] = float(sampled_logprobs[t])
    return semantic_entropy_from_top(logp, ids, embeddings, extra).tolist()


class RoseAgentLoop(AgentLoopBase):
    """ROSE's branching rollouts (see the module docstring); single turn, like verl's single_turn_agent."""

    def __init__(self, *args: Any, epsilon: float = 0.5, top: int = 20, embeddings_path: str | None = None,
                 seed: int | None = None, **kwargs: Any) -> None:  # fmt: skip
        kwargs.pop("name", None)  # the YAML entry's own name, handed over by hydra
        super().__init__(*args, **kwargs)
        self.settings = validate_config(RoseLoopSettings, dict(epsilon=epsilon, top=top,
                                        embeddings_path=embeddings_path, seed=seed))  # fmt: skip
        self.response_length = int(self.rollout_config.response_length)

    def _embeddings(self) -> torch.Tensor:
        path = self.settings.embeddings_path or str(self.config.actor_rollout_ref.model.path)
        return load_input_embeddings(path)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        uid = kwargs.get("uid")
        if uid is None:
            raise EmbedkitError("the embedkit_rose agent loop needs the prompt's uid (verl's trainers set it)")
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        key = (str(uid), str(kwargs.get("global_steps", "")))
        tree = _open_tree(key, self.settings.seed)
        async with tree.lock:  # the sessions of one prompt take turns: each may branch off the earlier ones
            node, parent, branch_pos = await self._grow(tree, prompt_ids, sampling_params)
            expected = int(self.rollout_config.n)
            if len(tree.nodes) >= expected and _TREES.get(key) is tree:
                del _TREES[key]
        extra = {"rose_tree": tree.id, "rose_node": len(tree.nodes) - 1, "rose_parent": parent,
                 "rose_branch_pos": branch_pos, "turn_scores": [], "tool_rewards": []}  # fmt: skip
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=node.response_ids, response_mask=[1] * len(node.response_ids),
            response_logprobs=node.log_probs if sampling_params.get("logprobs") else None, num_turns=2,
            metrics={}, extra_fields=extra,
        )  # fmt: skip

    async def _grow(self, tree: _Tree, prompt_ids: list[int],
                    sampling_params: dict[str, Any]) -> tuple[_Node, int, int]:  # fmt: skip
        earlier = tree.nodes
        se = [torch.tensor(n.se) for n in earlier]
        masks = [torch.ones(len(n.se)) for n in earlier]
        branch = choose_branch(se, masks, tree.rng, self.settings.epsilon) if earlier else None
        if branch is None:  # a first response has no branch position; a later one from the prompt has 0
            parent, k, prefix, prefix_logp, prefix_se = -1, (0 if earlier else -1), [], [], []
        else:
            parent, k = branch
            src = earlier[parent]
            prefix, prefix_se = src.response_ids[:k], src.se[:k]
            prefix_logp = (src.log_probs or [])[:k]
        start = len(prompt_ids) + len(prefix)
        params = {**sampling_params, "logprobs": True, "max_tokens": self.response_length - len(prefix)}
        out = await self.server_manager.generate(request_id=uuid.uuid4().hex, prompt_ids=prompt_ids + prefix,
                                                 sampling_params=params)  # fmt: skip
        tokens = list(out.token_ids)[: self.response_length - len(prefix)]
        logp = list(out.log_probs)[: len(tokens)] if out.log_probs else None
        scored = await self.server_manager.generate(
            request_id=uuid.uuid4().hex, prompt_ids=prompt_ids + prefix + tokens,
            sampling_params={"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": self.settings.top,
                             "detokenize": False},
        )  # fmt: skip
        new_se = position_entropies(scored.extra_fields, start, tokens, logp, self._embeddings())
        node = _Node(response_ids=prefix + tokens, se=prefix_se + new_se,
                     log_probs=(prefix_logp + logp) if logp is not None and len(prefix_logp) == len(prefix) else None)  # fmt: skip
        tree.nodes.append(node)
        return node, parent, k


# -- advantages -----------------------------------------------------------------------------------------------
_CURRENT_TREES: contextvars.ContextVar[list[TreeRow] | None] = contextvars.ContextVar("rose_trees", default=None)


def tree_rows(extra_fields: Sequence[Mapping[str, Any]]) -> list[TreeRow]:
    """The tree rows of a batch from its outputs' extra fields (one mapping per row, batch order)."""
    rows = []
    for i, extra in enumerate(extra_fields):
        missing = [k for k in TREE_FIELDS if extra is None or k not in extra or extra[k] is None]
        if missing:
            raise EmbedkitError(f"row {i} of the batch has no {', '.join(missing)}: it was not generated by the "
                                f"{ROSE_NAME} agent loop (set actor_rollout_ref.rollout.agent.default_agent_loop)")  # fmt: skip
        rows.append(TreeRow(str(extra["rose_tree"]), int(extra["rose_node"]), int(extra["rose_parent"]),
                            int(extra["rose_branch_pos"])))  # fmt: skip
    return rows


def tree_rows_from_batch(non_tensor_batch: Mapping[str, Any]) -> list[TreeRow]:
    """The tree rows of a `DataProto`'s `non_tensor_batch`, where verl's agent-loop workers put each output's
    extra fields as columns (the batch verl's non-v1 trainer hands `compute_advantage`)."""
    absent = [k for k in TREE_FIELDS if k not in non_tensor_batch]
    if absent:
        raise EmbedkitError(f"the batch has no {', '.join(absent)}: its rollouts did not come from the {ROSE_NAME} "
                            "agent loop (set actor_rollout_ref.rollout.agent.default_agent_loop)")  # fmt: skip
    n = len(non_tensor_batch[TREE_FIELDS[0]])
    return tree_rows([{k: non_tensor_batch[k][i] for k in TREE_FIELDS} for i in range(n)])


@contextlib.contextmanager
def rose_trees(rows: Sequence[TreeRow]) -> Iterator[None]:
    """Make the batch's tree rows visible to the `embedkit_rose` estimator while verl computes advantages."""
    token = _CURRENT_TREES.set(list(rows))
    try:
        yield
    finally:
        _CURRENT_TREES.reset(token)


def verl_rose_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config: Any = None,
                        **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """verl's estimator signature → ROSE segment advantages over each output's tree (`agents.rl.rose`);
    `algorithm.rose_length_alpha` turns on the length-aware term."""
    rows = _CURRENT_TREES.get()
    keys = _embedkit_session_keys()
    if rows is None and keys is not None:  # an embedkit_* trainer mode of agents.rl.verl.trainer
        rows = trees_from_queue(keys)
    if rows is None:
        raise EmbedkitError(f"algorithm.adv_estimator={ROSE_NAME} needs the rollout tree, which verl's "
                            "compute_advantage does not pass to an estimator: set "
                            f"trainer.v1.trainer_mode={ROSE_NAME} (or one of embedkit's embedkit_* modes) with "
                            "trainer.use_v1=true")  # fmt: skip
    n = token_level_rewards.shape[0]
    if len(rows) != n:
        raise EmbedkitError(f"{ROSE_NAME}: {len(rows)} tree rows for a batch of {n}")
    trees: dict[str, list[int]] = {}
    for i in sorted(range(n), key=lambda i: rows[i].node):  # a tree's responses in the order they were made
        trees.setdefault(rows[i].tree, []).append(i)
    order = [i for members in trees.values() for i in members]
    group_ids, parents = [], []
    for g, members in enumerate(trees.values()):
        local = {rows[i].node: r for r, i in enumerate(members)}
        for i in members:
            row = rows[i]
            if row.parent >= 0 and row.parent not in local:
                raise EmbedkitError(f"{ROSE_NAME}: node {row.node} of tree {row.tree} branched from node "
                                    f"{row.parent}, which is not in the batch (a tree enters training whole)")  # fmt: skip
            group_ids.append(g)
            parents.append(local[row.parent] if row.parent >= 0 else None)
    mask = response_mask.float()
    alpha = config.get("rose_length_alpha", 0.0) if config is not None and hasattr(config, "get") else 0.0
    adv_sorted = segment_advantages(
        rewards=token_level_rewards.sum(-1).float()[order].tolist(), group_ids=group_ids,
        parents=parents, branch_positions=[rows[i].branch_pos for i in order],
        lengths=mask.sum(-1).int()[order].tolist(), width=mask.shape[1], length_alpha=float(alpha or 0.0),
    )  # fmt: skip
    adv = torch.zeros_like(mask)
    adv[order] = adv_sorted
    adv = (adv * mask).to(token_level_rewards.dtype)
    return adv, adv


def stored_extra_fields(data: Any) -> list[Mapping[str, Any]]:
    """The `extra_fields` of each row of a TensorDict as verl's agent loops store their outputs
    (`list_of_dict_to_tensordict` of `AgentLoopOutput.as_dict()`: a stack of non-tensor dicts)."""
    stacked = data["extra_fields"]
    return list(stacked.tolist() if hasattr(stacked, "tolist") else stacked)


def trees_from_queue(keys: Sequence[str], partition_id: str = "train") -> list[TreeRow]:
    """The tree rows of the v1 trainer's batch `keys`, read from verl's TransferQueue, where its agent-loop
    workers stored each output with its `extra_fields`."""
    data = tq.kv_batch_get(keys=list(keys), partition_id=partition_id, select_fields=["extra_fields"])
    return tree_rows(stored_extra_fields(data))


def _embedkit_session_keys() -> Sequence[str] | None:
    """The batch keys that embedkit's own v1 trainer modes (agents.rl.verl.trainer) publish while verl
    computes advantages, when that module is in use."""
    from agents.rl import verl_adapter

    keys = getattr(verl_adapter, "SESSION_KEYS", None)
    return keys.get() if keys is not None else None


class RoseTrainer(PPOTrainerSync):
    """verl's sync trainer that hands each batch's rollout trees to the `embedkit_rose` estimator."""

    trainer_mode = VerlModeName("sync")

    def __init__(self, config: Any) -> None:
        register_rose()  # the estimator must live in this process (verl's TaskRunner)
        check_rose_config(config)
        super().__init__(config)

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        if self.config.algorithm.adv_estimator != ROSE_NAME:
            return super()._compute_advantage(batch, metrics)
        with rose_trees(trees_from_queue(batch.keys, batch.partition_id)):
            return super()._compute_advantage(batch, metrics)


def register_rose() -> list[str]:
    """Register ROSE in verl's registries: the estimator, the v1 trainer and the agent loop, all under
    `embedkit_rose` (registering again is harmless). Returns the registries it wrote to."""
    if core_algos.ADV_ESTIMATOR_REGISTRY.get(ROSE_NAME) is not verl_rose_advantage:
        core_algos.register_adv_est(ROSE_NAME)(verl_rose_advantage)
    if TRAINER_REGISTRY.get(ROSE_NAME) is not RoseTrainer:
        register_trainer(ROSE_NAME)(RoseTrainer)
    agent_loop.register(ROSE_NAME)(RoseAgentLoop)
    return ["adv_estimator", "trainer", "agent_loop"]


register_rose()  # on import, as verl's own agent loops and trainers register (agents.rl.verl.plugin imports this)

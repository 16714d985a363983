"""ROSE inside stock verl 0.9.1 (`agents.rl.verl.rose`), driven by verl's own classes on a CPU.

- Rollouts: verl's `AgentLoopWorker` (built from hydra's composition of verl's shipped `ppo_trainer` YAML, with
  our agent-loop YAML as `agent_loop_config_path`) runs the `embedkit_rose` loop for two prompts × n sessions.
  Its server is scripted: a fixed next-token table (logits depend on the previous token), so every position's
  top candidates, and therefore every semantic entropy and branch point, are known. The loop, verl's worker
  and the advantage are real.
- Advantages: verl's own `compute_advantage` with `adv_estimator=embedkit_rose`, on the worker's batch and on
  the trees of tests/test_rl_formulas.py (official readings), rows shuffled and two trees in one batch.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import open_dict
from verl import DataProto
from verl.experimental.agent_loop import agent_loop as verl_agent_loop
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, AgentLoopWorker
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.rollout.replica import TokenOutput

from agents.rl.rose import segment_advantages, semantic_entropy_from_top
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from agents.rl.verl.rose import (
    ROSE_NAME,
    TREE_FIELDS,
    RoseLoopSettings,
    RoseTrainer,
    TreeRow,
    check_rose_config,
    load_input_embeddings,
    position_entropies,
    register_rose,
    rose_trees,
    stored_extra_fields,
    tree_rows,
    tree_rows_from_batch,
)
from agents.rl.verl_adapter import NOT_REGISTERED, register_with_verl
from embedkit.errors import DataFormatError, EmbedkitError
from tests.test_rl_formulas import CHILD_BEFORE_PARENT, TREE

LOOP_YAML = Path(__file__).resolve().parents[1] / "agents" / "rl" / "verl" / "rose_agent_loop.yaml"
CHAT_TEMPLATE = ("{% for m in messages %}### {{ m.role }}\n{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}### assistant\n{% endif %}")  # fmt: skip
N, RESPONSE_LENGTH, TOP = 4, 6, 5
PROMPTS = ["ab", "cd"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Importing agents.rl.verl.rose registered ROSE; registering again is harmless."""
    return register_rose()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny random-init causal LM folder (safetensors) with a chat template; returns (folder, embeddings)."""
    folder = tmp_path_factory.mktemp("rose-policy")
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = build_tiny_causal_lm(tokenizer, n_layer=1, n_embd=16, n_head=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.get_input_embeddings().weight.detach().clone()


@pytest.fixture(scope="module")
def verl_config(policy):
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={policy[0]}", "actor_rollout_ref.rollout.name=vllm",
            f"actor_rollout_ref.rollout.n={N}", f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
            "actor_rollout_ref.rollout.prompt_length=64", "actor_rollout_ref.rollout.calculate_log_probs=true",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        ])  # fmt: skip


class ScriptedServer:
    """verl's `server_manager.generate` with a fixed next-token distribution softmax(TABLE[previous token]):
    sampling answers token ids and their log-probs; a `prompt_logprobs` request answers the top candidates of
    every position in vLLM's layout (entry j predicts token j+1, a dummy entry last), as verl's servers do."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3
        self.calls: list[tuple[list[int], dict]] = []
        self.seen: dict[str, int] = {}

    def logp(self, previous: int) -> torch.Tensor:
        return F.log_softmax(self.table[previous], dim=-1)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **_):
        self.calls.append((list(prompt_ids), dict(sampling_params)))
        if "prompt_logprobs" in sampling_params:
            k = sampling_params["prompt_logprobs"]
            ids, logps = [], []
            for j in range(len(prompt_ids) - 1):
                values, top = torch.topk(self.logp(prompt_ids[j]), k)
                ids.append(top.tolist())
                logps.append(values.tolist())
            ids.append([0] * k)
            logps.append([0.0] * k)
            return TokenOutput(token_ids=[0], extra_fields={"prompt_ids": ids, "prompt_logprobs": logps})
        rng = random.Random(f"{prompt_ids}:{self.seen.setdefault(str(prompt_ids), 0)}")  # reproducible draws
        self.seen[str(prompt_ids)] += 1
        tokens, logps, last = [], [], prompt_ids[-1]
        for _ in range(sampling_params["max_tokens"]):
            dist = self.logp(last)
            last = rng.choices(range(len(dist)), weights=dist.exp().tolist())[0]
            tokens.append(last)
            logps.append(float(dist[last]))
        return TokenOutput(token_ids=tokens, log_probs=logps if sampling_params.get("logprobs") else None)


def expected_entropies(server: ScriptedServer, embeddings: torch.Tensor, ids: list[int], start: int) -> list[float]:
    """The official cosine-entropy at each response position, written out: H over vLLM's logprob dict (the
    top K plus the sampled token when it is not among them), F over the top K with normalised embeddings."""
    values = []
    for a in range(start, len(ids)):
        logp = server.logp(ids[a - 1])
        top_logp, top = torch.topk(logp, TOP)
        p = top_logp.exp()
        h = -(p * top_logp).sum()
        if ids[a] not in top.tolist():
            h = h - logp[ids[a]].exp() * logp[ids[a]]
        e = F.normalize(embeddings[top], dim=-1)
        mixed = (p[:, None] * e).sum(0)
        values.append(float(-(mixed @ mixed - (p * p).sum()) * h))
    return values


def _loop_yaml(tmp_path: Path, **settings) -> Path:
    entries = yaml.safe_load(LOOP_YAML.read_text())
    entries[0].update(settings)
    path = tmp_path / "rose_agent_loop.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def _generate(verl_config, tmp_path: Path, **settings) -> tuple[DataProto, ScriptedServer]:
    """verl's AgentLoopWorker.generate_sequences over PROMPTS × N rows (uid per prompt, as verl's trainer
    repeats them), with the scripted server."""
    config = verl_config.copy()
    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(_loop_yaml(tmp_path, **settings))
    server = ScriptedServer(vocab=len(build_char_tokenizer()))
    rows = [(p, f"uid-{i}") for i, p in enumerate(PROMPTS) for _ in range(N)]
    raw = np.empty(len(rows), dtype=object)
    for i, (prompt, _) in enumerate(rows):
        raw[i] = [{"role": "user", "content": prompt}]
    batch = DataProto.from_dict(tensors={"row": torch.arange(len(rows))}, non_tensors={
        "raw_prompt": raw, "uid": np.array([u for _, u in rows], dtype=object),
        "agent_name": np.array([ROSE_NAME] * len(rows), dtype=object)})  # fmt: skip

    async def run() -> DataProto:
        worker = AgentLoopWorker(config, llm_client=server)
        return await worker.generate_sequences(batch)

    return asyncio.run(run()), server


def _responses(out: DataProto) -> list[list[int]]:
    mask = out.batch["response_mask"]
    return [out.batch["responses"][i][mask[i].bool()].tolist() for i in range(len(out))]


@pytest.fixture(scope="module")
def greedy_tree(verl_config, policy, tmp_path_factory):
    """ε = 0: every later response branches at the maximal semantic entropy."""
    return _generate(verl_config, tmp_path_factory.mktemp("greedy"), epsilon=0.0, top=TOP, seed=0)


def test_agent_loop_branches_at_the_maximal_semantic_entropy_through_verls_worker(greedy_tree, policy):
    out, server = greedy_tree
    _, embeddings = policy
    responses = _responses(out)
    rows = tree_rows_from_batch(out.non_tensor_batch)
    assert len({r.tree for r in rows}) == len(PROMPTS)  # one tree per prompt uid
    for tree in dict.fromkeys(r.tree for r in rows):
        members = sorted((i for i, r in enumerate(rows) if r.tree == tree), key=lambda i: rows[i].node)
        assert [rows[i].node for i in members] == list(range(N))
        prompt = out.batch["input_ids"][members[0]][out.batch["attention_mask"][members[0]].bool()].tolist()
        prompt = prompt[: len(prompt) - len(responses[members[0]])]
        se = [expected_entropies(server, embeddings, prompt + responses[i], len(prompt)) for i in members]
        first = rows[members[0]]
        assert (first.parent, first.branch_pos) == (-1, -1)  # the first response is sampled from the prompt
        for r in range(1, N):
            best = max(((v, -p, -t) for p in range(r) for t, v in enumerate(se[p])))
            parent, k = -best[1], -best[2]  # the first maximum in (response, position) order
            row = rows[members[r]]
            assert (row.parent, row.branch_pos) == (parent, k)
            child, source = responses[members[r]], responses[members[parent]]
            assert child[:k] == source[:k] and len(child) == RESPONSE_LENGTH
            # the continuation came from verl's server interface, prompted with the kept prefix
            assert (prompt + source[:k], RESPONSE_LENGTH - k) in [(c, p.get("max_tokens")) for c, p in server.calls]
        assert len(set(map(tuple, (responses[i] for i in members)))) > 1
    scoring = [p for _, p in server.calls if "prompt_logprobs" in p]
    assert len(scoring) == N * len(PROMPTS) and all(p["prompt_logprobs"] == TOP for p in scoring)


def test_epsilon_one_starts_every_response_at_the_prompt(verl_config, tmp_path):
    out, server = _generate(verl_config, tmp_path, epsilon=1.0, top=TOP)
    rows = tree_rows_from_batch(out.non_tensor_batch)
    assert sorted((r.node, r.parent, r.branch_pos) for r in rows) == sorted(
        [(0, -1, -1)] * 2 + [(n, -1, 0) for n in range(1, N)] * 2)  # fmt: skip
    prompts = {tuple(c) for c, p in server.calls if "prompt_logprobs" not in p}
    assert len(prompts) == len(PROMPTS)  # only the prompts themselves were continued


def _token_rewards(mask: torch.Tensor, rewards: list[float]) -> torch.Tensor:
    out = torch.zeros_like(mask, dtype=torch.float32)
    for i, r in enumerate(rewards):
        out[i, int(mask[i].sum()) - 1] = r
    return out


def test_worker_batch_advantages_through_verls_compute_advantage(greedy_tree, verl_config):
    out, _ = greedy_tree
    responses = _responses(out)
    rewards = [float(sum(r) % 3 == 0) for r in responses]
    mask = out.batch["response_mask"]
    data = DataProto.from_dict(tensors={"token_level_rewards": _token_rewards(mask, rewards), "response_mask": mask},
                               non_tensors=dict(out.non_tensor_batch))  # fmt: skip
    rows = tree_rows_from_batch(out.non_tensor_batch)
    with rose_trees(rows):
        adv = compute_advantage(data, adv_estimator=ROSE_NAME, config=verl_config.algorithm).batch["advantages"]
    trees = list(dict.fromkeys(r.tree for r in rows))
    for tree in trees:
        members = sorted((i for i, r in enumerate(rows) if r.tree == tree), key=lambda i: rows[i].node)
        expected = segment_advantages(
            rewards=[rewards[i] for i in members], group_ids=[0] * len(members),
            parents=[rows[i].parent if rows[i].parent >= 0 else None for i in members],
            branch_positions=[rows[i].branch_pos for i in members], lengths=[len(responses[i]) for i in members],
            width=mask.shape[1])  # fmt: skip
        assert torch.allclose(adv[members], expected * mask[members], atol=1e-6)
    assert adv.abs().sum() > 0
    with pytest.raises(EmbedkitError, match=f"trainer.v1.trainer_mode={ROSE_NAME}"):  # no tree: refused
        compute_advantage(data, adv_estimator=ROSE_NAME, config=verl_config.algorithm)


def _verl_layout(trees: list[dict], perm: list[int], width: int):
    """Trees as verl's batch holds them: rows of several trees, shuffled (verl balances batches), right-padded."""
    rows, rewards, lengths = [], [], []
    for t, tree in enumerate(trees):
        for node, (parent, k) in enumerate(zip(tree["parents"], tree["branch_positions"], strict=True)):
            rows.append(TreeRow(f"tree-{t}", node, -1 if parent is None else parent, -1 if parent is None else k))
            rewards.append(tree["rewards"][node])
            lengths.append(tree["lengths"][node])
    mask = torch.zeros(len(rows), width)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    rows = [rows[i] for i in perm]
    mask, rewards = mask[perm], [rewards[i] for i in perm]
    return rows, DataProto.from_dict(tensors={"token_level_rewards": _token_rewards(mask, rewards),
                                              "response_mask": mask})  # fmt: skip


def _row(rows: list[TreeRow], tree: int, node: int) -> int:
    return next(i for i, r in enumerate(rows) if r.tree == f"tree-{tree}" and r.node == node)


def _algorithm(verl_config, alpha: float):
    config = verl_config.algorithm.copy()
    with open_dict(config):
        config.rose_length_alpha = alpha
    return config


# (rewards, lengths, alpha) on the official readings' trees, with the numbers of tests/test_rl_formulas.py
CASES = {
    "hand-built": (dict(TREE, lengths=[6, 5, 6, 4]), 0.0),
    "length-term": (dict(TREE, lengths=[6, 5, 8, 4]), 1.0),
    "child-before-parent": (dict(rewards=[1.0, 0.0, 0.0, 0.0], **CHILD_BEFORE_PARENT, lengths=[8, 8, 6, 4]), 0.0),
    "same-position-two-paths": (dict(rewards=[1.0, 0.0, 0.0, 0.0], group_ids=[0] * 4, parents=[None, None, 0, 1],
                                     branch_positions=[0, 0, 3, 3], lengths=[6, 6, 5, 4]), 0.0),
    "length-from-k-common": (dict(rewards=[1.0, 0.0, 0.5, 0.0], **CHILD_BEFORE_PARENT, lengths=[10, 8, 6, 4]), 1.0),
    "length-alpha-2": (dict(rewards=[1.0, 0.0, 0.5, 0.0], **CHILD_BEFORE_PARENT, lengths=[10, 8, 6, 4]), 2.0),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_official_trees_through_verls_compute_advantage_equal_agents_rl_rose(case, verl_config):
    tree, alpha = CASES[case]
    other = dict(rewards=[0.0, 1.0], group_ids=[0, 0], parents=[None, 0], branch_positions=[0, 2], lengths=[3, 5])
    width = 12
    perm = [5, 2, 0, 4, 1, 3]  # rows of the two trees interleaved and out of node order
    rows, data = _verl_layout([tree, other], perm, width)
    with rose_trees(rows):
        adv = compute_advantage(data, adv_estimator=ROSE_NAME, config=_algorithm(verl_config, alpha)).batch["advantages"]
    for t, spec in enumerate([tree, other]):
        n = len(spec["rewards"])
        expected = segment_advantages(rewards=spec["rewards"], group_ids=[0] * n, parents=spec["parents"],
                                      branch_positions=spec["branch_positions"], lengths=spec["lengths"],
                                      width=width, length_alpha=alpha)  # fmt: skip
        for node in range(n):
            got = adv[_row(rows, t, node)]
            assert got.tolist() == pytest.approx(expected[node].tolist(), abs=1e-6), (case, t, node)
    if case == "child-before-parent":  # the official numbers (a path-based tree gives others)
        v0, v = 1 / 4, 1 / 3
        assert adv[_row(rows, 0, 2), :6].tolist() == pytest.approx([v - v0] * 2 + [0.0] * 3 + [-v], abs=1e-6)
    if case == "length-from-k-common":
        assert adv[_row(rows, 0, 0), 5].item() == pytest.approx(0.5 - 0.5 * 4 / 5, abs=1e-6)


def test_a_tree_missing_a_parent_or_fields_is_refused(verl_config):
    rows, data = _verl_layout([dict(TREE, lengths=[6, 5, 6, 4])], [0, 1, 2, 3], 8)
    with rose_trees(rows[1:] + [rows[0]._replace(node=9)]), pytest.raises(EmbedkitError, match="not in the batch"):
        compute_advantage(data, adv_estimator=ROSE_NAME, config=verl_config.algorithm)
    with pytest.raises(EmbedkitError, match="row 1 of the batch has no rose_parent"):
        tree_rows([{k: 0 for k in TREE_FIELDS}, {"rose_tree": "t", "rose_node": 1, "rose_branch_pos": 2}])


def test_v1_trainer_reads_the_trees_from_the_outputs_as_verl_stores_them(greedy_tree):
    """The v1 trainer's TransferQueue holds `list_of_dict_to_tensordict` of `AgentLoopOutput.as_dict()` plus
    the prompt's fields (AgentLoopWorkerTQ._agent_loop_postprocess); `RoseTrainer` reads `extra_fields` back."""
    out, _ = greedy_tree
    rows = tree_rows_from_batch(out.non_tensor_batch)
    fields = []
    for i, row in enumerate(rows):
        extra = dict(zip(TREE_FIELDS, row, strict=True))
        output = AgentLoopOutput(prompt_ids=[1, 2], response_ids=[3] * (i + 1), response_mask=[1] * (i + 1),
                                 metrics={}, extra_fields=extra)  # fmt: skip
        field = output.as_dict()
        field.update({"uid": "u", "session_id": i, "global_steps": 1})
        fields.append(field)
    stored = list_of_dict_to_tensordict(fields)
    assert tree_rows(stored_extra_fields(stored)) == rows
    assert get_trainer_cls(ROSE_NAME) is RoseTrainer and issubclass(RoseTrainer, PPOTrainerSync)
    assert RoseTrainer.trainer_mode == "sync"  # verl's sync replay buffer and refill, by name
    assert core_algos.get_adv_estimator_fn(ROSE_NAME) is not None
    assert verl_agent_loop._agent_loop_registry[ROSE_NAME]["_target_"] == "agents.rl.verl.rose.RoseAgentLoop"


class InMemoryQueue:
    """TransferQueue's `kv_batch_put` / `kv_batch_get` on one dict. The real queue needs Ray actors, which did not
    start on the 2-core test machine; rows are stored as verl's v1 agent-loop workers write them and read back as
    `list_of_dict_to_tensordict` of the selected fields, per-token tensors nested, in key order."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}

    def put_rows(self, keys, rows, partition_id="train") -> None:
        for key, row in zip(keys, rows, strict=True):
            self.rows[(partition_id, key)] = dict(row)

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        for name in fields.keys():
            values = fields[name]
            if getattr(values, "is_nested", False):
                per_row = list(values.unbind(0))
            elif isinstance(values, torch.Tensor):
                per_row = list(values)
            else:  # non-tensor values, one per row
                per_row = [fields[i][name] for i in range(len(keys))]
            for key, value in zip(keys, per_row, strict=True):
                self.rows.setdefault((partition_id, key), {})[name] = value

    async def async_kv_batch_put(self, keys, fields=None, tags=None, partition_id=None):
        self.kv_batch_put(keys, partition_id, fields=fields, tags=tags)

    async def async_kv_put(self, key, partition_id=None, fields=None, tag=None):
        return None  # the prompt's status tag: nothing here reads it

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        rows = [self.rows[(partition_id, k)] for k in keys]
        names = [f for f in select_fields if all(f in r for r in rows)]
        data = list_of_dict_to_tensordict([{f: r[f] for f in names} for r in rows])
        for f in names:  # per-token fields come back nested even when every row has the same length
            if isinstance(rows[0][f], torch.Tensor) and rows[0][f].dim() > 0 and not data[f].is_nested:
                data[f] = torch.nested.as_nested_tensor([r[f] for r in rows], layout=torch.jagged)
        return data


def assert_stored_tree_advantages(queue, keys, rows, responses, rewards) -> None:
    """The advantages verl stored for each output equal agents.rl.rose's tree advantage of its tree."""
    for tree in dict.fromkeys(r.tree for r in rows):
        members = sorted((i for i, r in enumerate(rows) if r.tree == tree), key=lambda i: rows[i].node)
        expected = segment_advantages(
            rewards=[rewards[i] for i in members], group_ids=[0] * len(members),
            parents=[rows[i].parent if rows[i].parent >= 0 else None for i in members],
            branch_positions=[rows[i].branch_pos for i in members], lengths=[len(responses[i]) for i in members],
            width=RESPONSE_LENGTH)  # fmt: skip
        for r, i in enumerate(members):
            got = queue.rows[("train", keys[i])]["advantages"]
            assert got.tolist() == pytest.approx(expected[r, : len(responses[i])].tolist(), abs=1e-6)


@pytest.mark.parametrize("mode", [ROSE_NAME, "embedkit_sync"])
def test_rose_trainer_mode_runs_verls_advantage_step_with_the_trees(mode, greedy_tree, verl_config, monkeypatch):
    """A trainer mode as verl's main_ppo builds it (`get_trainer_cls(...)(config)`) runs verl's own
    `_compute_advantage` over the queued outputs, in an order that is not the trees' (the queue's storage is the
    in-memory stand-in above): `embedkit_rose` (verl's sync trainer) hands the trees over itself; under
    `embedkit_sync` (agents.rl.verl.trainer, TRE/MGS workers) the estimator reads them for the published keys."""
    import transfer_queue
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    import agents.rl.verl.trainer  # noqa: F401  (registers the embedkit_* modes)

    out, _ = greedy_tree
    rows, responses = tree_rows_from_batch(out.non_tensor_batch), _responses(out)
    queue = InMemoryQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", queue.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", queue.kv_batch_put)
    keys, fields = [], []
    for i, (row, response) in enumerate(zip(rows, responses, strict=True)):
        output = AgentLoopOutput(prompt_ids=[1, 2], response_ids=response, response_mask=[1] * len(response),
                                 reward_score=float(sum(response) % 3 == 0), metrics={},
                                 extra_fields=dict(zip(TREE_FIELDS, row, strict=True)))  # fmt: skip
        field = output.as_dict()
        uid = str(out.non_tensor_batch["uid"][i])
        field.update({"uid": uid, "session_id": row.node, "global_steps": 1})
        keys.append(f"{uid}_{row.node}_0")
        fields.append(field)
    queue.put_rows(keys, fields)
    config = verl_config.copy()
    with open_dict(config):
        config.trainer.v1.trainer_mode = mode
        config.algorithm.adv_estimator = ROSE_NAME
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config)
    if mode == ROSE_NAME:  # verl picks its sync replay buffer (and refill) by the mode's name
        assert type(trainer) is RoseTrainer and type(trainer.replay_buffer) is ReplayBuffer
        assert trainer.trainer_mode == "sync"
    order = [3, 6, 0, 7, 1, 5, 2, 4]
    batch = KVBatchMeta(keys=[keys[i] for i in order], tags=[{}] * len(order), partition_id="train")
    trainer._compute_advantage(batch, metrics={})
    assert_stored_tree_advantages(queue, keys, rows, responses, [float(sum(r) % 3 == 0) for r in responses])


def test_v1_rollout_to_advantage_through_verls_tq_worker_and_rose_trainer(verl_config, tmp_path, monkeypatch):
    """verl's v1 path end to end: `AgentLoopWorkerTQ._run_prompt` runs the n sessions of each prompt
    concurrently and writes their outputs under `{uid}_{session}_{index}` keys; a reward step adds `rm_scores`;
    the `embedkit_rose` trainer's `_compute_advantage` reads them back (queue: the in-memory stand-in)."""
    import transfer_queue
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    queue = InMemoryQueue()
    for name in ("kv_batch_get", "kv_batch_put", "async_kv_batch_put", "async_kv_put"):
        monkeypatch.setattr(transfer_queue, name, getattr(queue, name))
    monkeypatch.setattr(transfer_queue, "init", lambda *a, **k: None)
    config = verl_config.copy()
    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(_loop_yaml(tmp_path, epsilon=0.0, top=TOP))
        config.trainer.v1.trainer_mode = ROSE_NAME
        config.algorithm.adv_estimator = ROSE_NAME
    server = ScriptedServer(vocab=len(build_char_tokenizer()))
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}

    async def rollout() -> None:
        worker = AgentLoopWorkerTQ.__ray_actor_class__(config, llm_client=server)  # the class under ray.remote
        await asyncio.gather(*[worker._run_prompt(
            {"uid": f"uid-{i}", "raw_prompt": [{"role": "user", "content": p}], "agent_name": ROSE_NAME,
             "global_steps": 1, "index": i}, dict(params),
            trajectory={"step": 1, "sample_index": i, "rollout_n": 0, "validate": False}) for i, p in enumerate(PROMPTS)])  # fmt: skip

    asyncio.run(rollout())
    keys = sorted(k for _, k in queue.rows)
    assert keys == sorted(f"uid-{i}_{s}_0" for i in range(len(PROMPTS)) for s in range(N))
    rows = tree_rows([queue.rows[("train", k)]["extra_fields"] for k in keys])
    responses = [queue.rows[("train", k)]["responses"].tolist() for k in keys]
    assert sum(r.parent >= 0 for r in rows) == (N - 1) * len(PROMPTS)  # epsilon 0: every later session branched
    rewards = [float(sum(r) % 3 == 0) for r in responses]
    for key, response, reward in zip(keys, responses, rewards, strict=True):
        scores = torch.zeros(len(response))
        scores[-1] = reward
        row = queue.rows[("train", key)]
        row["rm_scores"] = scores  # the reward loop's part
        row["old_log_probs"] = row["rollout_log_probs"].clone()  # the actor's log-prob step's part
    trainer = get_trainer_cls(ROSE_NAME)(config)
    order = list(reversed(keys))
    trainer._compute_advantage(KVBatchMeta(keys=order, tags=[{}] * len(order), partition_id="train"), metrics={})
    assert_stored_tree_advantages(queue, keys, rows, responses, rewards)


def test_rose_trainer_checks_the_agent_loop_settings_before_any_worker(verl_config, tmp_path):
    config = verl_config.copy()
    with open_dict(config):
        config.trainer.v1.trainer_mode = ROSE_NAME
        config.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(_loop_yaml(tmp_path, epsilon=2.0))
    with pytest.raises(DataFormatError, match="epsilon") as info:
        get_trainer_cls(ROSE_NAME)(config)
    assert "rose_agent_loop.yaml" in str(info.value)
    other = tmp_path / "other.yaml"
    other.write_text("- name: tool_agent\n  _target_: verl.experimental.agent_loop.ToolAgentLoop\n")
    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(other)
    with pytest.raises(DataFormatError, match=f"no agent loop named {ROSE_NAME}"):
        get_trainer_cls(ROSE_NAME)(config)
    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(LOOP_YAML)
    assert check_rose_config(config) == RoseLoopSettings(epsilon=0.5, top=20)


def test_register_with_verl_points_to_register_rose():
    with pytest.raises(EmbedkitError, match="register_rose"):
        register_with_verl([ROSE_NAME])
    assert "register_rose" in NOT_REGISTERED[ROSE_NAME]


def test_position_entropies_are_the_official_cosine_entropy_of_the_servers_answers(policy):
    _, embeddings = policy
    server = ScriptedServer(vocab=embeddings.shape[0])
    ids = [3, 7, 11]
    for step in range(6):  # alternately the likeliest token and the first one outside the top K
        ranked = torch.argsort(server.logp(ids[-1]), descending=True)
        ids.append(int(ranked[0] if step % 2 else ranked[TOP]))
    start = 3
    scored = asyncio.run(server.generate("r", prompt_ids=ids, sampling_params={"max_tokens": 1, "prompt_logprobs": TOP}))
    sampled = [float(server.logp(ids[a - 1])[ids[a]]) for a in range(start, len(ids))]
    got = position_entropies(scored.extra_fields, start, ids[start:], sampled, embeddings)
    assert got == pytest.approx(expected_entropies(server, embeddings, ids, start), rel=1e-5, abs=1e-7)
    top_only = position_entropies(scored.extra_fields, start, ids[start:], None, embeddings)
    assert got[1::2] == pytest.approx(top_only[1::2])  # a sampled token among the top K adds nothing
    assert all(abs(a - b) > 1e-6 for a, b in zip(got[::2], top_only[::2], strict=True))
    with pytest.raises(EmbedkitError, match="prompt_logprobs"):
        position_entropies({}, start, ids[start:], sampled, embeddings)


def test_semantic_entropy_counts_the_sampled_token_in_h_only():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    p = torch.tensor([0.5, 0.3])  # top two; the sampled token (id 3) has 0.05 outside them
    h = -(p * p.log()).sum() - 0.05 * torch.log(torch.tensor(0.05))
    f = (p[0] ** 2 + p[1] ** 2) - (p * p).sum()  # orthogonal candidates: ‖Σ p e‖² = Σ p²
    got = semantic_entropy_from_top(p.log()[None], torch.tensor([[0, 1]]), emb, torch.tensor([0.05]).log())
    assert got.item() == pytest.approx(float(-f * h), abs=1e-7)
    opposite = semantic_entropy_from_top(p.log()[None], torch.tensor([[0, 2]]), emb, torch.tensor([0.05]).log())
    assert opposite.item() == pytest.approx(float(-((0.5 - 0.3) ** 2 - 0.34) * h), rel=1e-5)
    without = semantic_entropy_from_top(p.log()[None], torch.tensor([[0, 2]]), emb, torch.tensor([float("nan")]))
    assert without.item() == pytest.approx(float(-((0.5 - 0.3) ** 2 - 0.34) * -(p * p.log()).sum()), rel=1e-5)


def test_embeddings_are_read_from_the_checkpoint_alone(policy, tmp_path):
    folder, embeddings = policy
    assert torch.equal(load_input_embeddings(str(folder)), embeddings)
    with pytest.raises(EmbedkitError, match="embeddings_path"):
        load_input_embeddings(str(tmp_path))

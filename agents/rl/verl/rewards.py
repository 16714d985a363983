"""Reward managers for verl (0.9.1) whose reward comes from a judge served by an OpenAI-compatible server.

Importing this module registers, in verl's reward-loop registry (`verl.experimental.reward_loop.reward_manager`,
the one `verl.trainer.ppo.reward.load_reward_manager` reads in 0.9.1 for both trainers and the agent loop):

    embedkit_acpo        AC-GenRM judge, ACPO's reward (round robin ±2, structure −5, length; see rewards_scoring)
    embedkit_consistrm   ConsistRM judge, round robin over each prompt's responses
    embedkit_reflectrm   ReflectRM judge (analyses + reflection), round robin
    embedkit_consistrm_train   training a ConsistRM judge itself (the policy's responses are its judgements)

    python -m verl.trainer.main_ppo ... reward.num_workers=1 \
        reward.reward_manager.source=importlib reward.reward_manager.module.path=pkg://agents.rl.verl.rewards \
        reward.reward_manager.name=ACPORewardManager \
        +reward.reward_kwargs.judge.base_url=http://127.0.0.1:8000 +reward.reward_kwargs.judge.model=acgenrm

(`source=importlib` with `pkg://` imports this module in every process that builds a manager, Ray workers
included; `reward.reward_manager.name=embedkit_acpo` works where the module was imported first.) Settings are
`reward.reward_kwargs`, validated by `rewards_scoring.ACPOSettings` / `JudgeRewardSettings`.

verl 0.9.1 scores one sample per `run_single` call, spread at random over `reward.num_workers` workers; a
round robin needs every response of a prompt. So a manager collects the samples of each `uid` until
`group_size` have arrived (or `group_wait_s` passed: then it scores those that came, e.g. validation's single
samples), and it refuses `reward.num_workers` other than 1, which would split groups between processes.
The reward lands on the last response token (`RewardManagerBase.assemble_rm_scores`); `reward_extra_info`
always has the same keys: `acc` (the reward), `judge_error`, `judge_unreadable`, `group_members`.

verl's older `verl.workers.reward_manager` registry (`AbstractRewardManager`, batch `__call__`) is not read by
0.9.1's trainers or `load_reward_manager`, so nothing is registered there.

For `custom_reward_function` (verl's `naive` manager, any number of workers): `judge_reference_score` (a
served judge compares the response with the reference answer) and `reflectrm_train_score` (training a
ReflectRM judge on both of its tasks).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from agents.llm import LLMBackend, build_backend
from agents.rl.verl.rewards_scoring import (
    SETTINGS,
    ACPOSettings,
    ConsistRMTrainSettings,
    GroupSettings,
    JudgeRewardSettings,
    pair_outcomes,
    read_settings,
    score_groups,
)
from embedkit.errors import EmbedkitError

EXTRA_KEYS = ("acc", "judge_error", "judge_unreadable", "group_members")
MANAGER_NAMES = {"embedkit_acpo": "acgenrm", "embedkit_consistrm": "consistrm", "embedkit_reflectrm": "reflectrm"}


def _get(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        getter = getattr(node, "get", None)
        node = getter(part, None) if callable(getter) else getattr(node, part, None)
        if node is None:
            return default
    return node


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain dicts and lists (pydantic validates those)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        pass
    return value


@dataclass
class _Member:
    query: str
    response: str
    ground_truth: Any
    extra_info: dict


@dataclass
class _Group:
    future: asyncio.Future
    members: list[_Member] = field(default_factory=list)
    closed: bool = False


class GroupGate:
    """Holds each `uid`'s samples until its group is complete, then scores the group once for all of them."""

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}

    async def submit(self, uid: str, member: _Member, size: int, wait_s: float, score: Any) -> Any:
        """The result of `score(members)[k]` for this member (k: its arrival order in the group)."""
        loop = asyncio.get_running_loop()
        group = self.groups.get(uid)
        if group is None or group.closed:
            group = self.groups[uid] = _Group(loop.create_future())
        index = len(group.members)
        group.members.append(member)
        if len(group.members) >= size:
            self._close(uid, group, score)
        try:
            results = await asyncio.wait_for(asyncio.shield(group.future), timeout=wait_s)
        except TimeoutError:  # a group that will not fill (validation's n, a dropped sample): score what came
            self._close(uid, group, score)
            results = await group.future
        return results[index]

    def _close(self, uid: str, group: _Group, score: Any) -> None:
        if group.closed:
            return
        group.closed = True
        if self.groups.get(uid) is group:
            del self.groups[uid]
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(None, score, list(group.members))  # judge calls block: off the event loop

        def done(f: asyncio.Future) -> None:
            if f.exception() is not None:
                group.future.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                group.future.set_result(f.result())

        task.add_done_callback(done)


def _long_form(member: _Member, default: bool) -> bool:
    for source in (member.ground_truth, member.extra_info):
        if isinstance(source, dict) and "long_form" in source:
            return bool(source["long_form"])
    return default


def _query(item: Any, tokenizer: Any) -> str:
    """The user's question: the last user turn of `raw_prompt` when verl kept it, else the decoded prompt."""
    raw = item.non_tensor_batch.get("raw_prompt")
    if raw is not None:
        turns = [m for m in list(raw) if isinstance(m, dict) and m.get("role") == "user"]
        if turns:
            content = turns[-1].get("content")
            return content if isinstance(content, str) else json.dumps(content)
    prompt_ids = item.batch["prompts"]
    mask = item.batch["attention_mask"][: prompt_ids.shape[-1]].bool()
    return tokenizer.decode(prompt_ids[mask], skip_special_tokens=True)


class GroupRewardManager(RewardManagerBase):
    """Base of embedkit's group rewards in verl: `run_single` per sample, `score_members` once per `uid` group.

    A subclass sets `settings_model` (read from `reward.reward_kwargs`), `extra_keys` (the `reward_extra_info`
    every sample gets, `acc` first: the reward) and `score_members` (runs in a worker thread)."""

    settings_model: ClassVar[type[GroupSettings]] = GroupSettings
    extra_keys: ClassVar[tuple[str, ...]] = ("acc",)
    what: ClassVar[str] = "this reward"

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, reward_router_address: Any = None,
                 reward_model_tokenizer: Any = None, **_: Any) -> None:  # fmt: skip
        super().__init__(config, tokenizer, compute_score)
        kwargs = dict(_plain(_get(config, "reward.reward_kwargs", {})) or {})
        kwargs.setdefault("group_size", _get(config, "actor_rollout_ref.rollout.n", 1))
        self.settings = read_settings(self.settings_model, kwargs)
        workers = _get(config, "reward.num_workers", 1)
        if workers != 1:
            raise EmbedkitError(f"{self.what} scores the responses of one prompt together, so every response of a "
                                f"prompt must reach the same reward worker; verl sends each sample to a random one "
                                f"of reward.num_workers={workers}: set reward.num_workers=1")  # fmt: skip
        self.gate = GroupGate()

    def score_members(self, members: list[_Member]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:][0]  # a multi-output session is scored on its last output, as verl's naive manager does
        responses = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-responses.shape[-1]:].sum())
        response = self.tokenizer.decode(responses[:valid], skip_special_tokens=True)
        extra_info = item.non_tensor_batch.get("extra_info")
        member = _Member(_query(item, self.tokenizer), response,
                         (item.non_tensor_batch.get("reward_model") or {}).get("ground_truth"),
                         extra_info if isinstance(extra_info, dict) else {})  # fmt: skip
        uid = item.non_tensor_batch.get("uid")
        if uid is None:  # no group to wait for
            out = (await asyncio.get_running_loop().run_in_executor(None, self.score_members, [member]))[0]
        else:
            size = int(self.settings.group_size or 1)
            out = await self.gate.submit(str(uid), member, size, self.settings.group_wait_s, self.score_members)
        info = {key: out[key] for key in self.extra_keys}
        return {"reward_score": info["acc"], "reward_extra_info": info}


class JudgeRewardManager(GroupRewardManager):
    """A served judge ranks each prompt's responses (`rewards_scoring.score_groups`)."""

    judge_kind: ClassVar[str] = ""
    extra_keys = EXTRA_KEYS

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, **kwargs: Any) -> None:
        super().__init__(config, tokenizer, compute_score, **kwargs)
        assert isinstance(self.settings, JudgeRewardSettings)
        self.judge_settings: JudgeRewardSettings = self.settings
        self.backend: LLMBackend = build_backend(self.settings.judge)

    def score_members(self, members: list[_Member]) -> list[dict[str, Any]]:
        """Rewards and extra info of one group (runs in a worker thread)."""
        settings = self.judge_settings
        long_form = _long_form(members[0], bool(getattr(settings, "long_form", False)))
        groups = [(members[0].query, [m.response for m in members], long_form)]
        try:
            scored = score_groups(self.judge_kind, settings, groups, backend=self.backend)
        except EmbedkitError:
            if settings.on_judge_error == "raise":
                raise
            return [{"acc": 0.0, "judge_error": 1, "judge_unreadable": 0, "group_members": len(members)}
                    for _ in members]  # fmt: skip
        unreadable = int(scored.stats.get("unreadable", 0))
        return [{"acc": float(r), "judge_error": 0, "judge_unreadable": unreadable, "group_members": len(members)}
                for r in scored.rewards[0]]  # fmt: skip


@register("embedkit_acpo")
class ACPORewardManager(JudgeRewardManager):
    """ACPO: AC-GenRM's round robin with ACPO's structure and length terms (`ACPOSettings`)."""

    judge_kind = "acgenrm"
    settings_model = ACPOSettings
    what = "ACPO's round robin"


@register("embedkit_consistrm")
class ConsistRMRewardManager(JudgeRewardManager):
    """A served ConsistRM judge ranks each prompt's responses (round robin, both orders)."""

    judge_kind = "consistrm"
    settings_model = JudgeRewardSettings
    what = "the ConsistRM judge's round robin"


@register("embedkit_reflectrm")
class ReflectRMRewardManager(JudgeRewardManager):
    """A served ReflectRM judge (sampled analyses, then reflection) ranks each prompt's responses."""

    judge_kind = "reflectrm"
    settings_model = JudgeRewardSettings
    what = "the ReflectRM judge's round robin"


# -- training the judges themselves (the policy writes the judgements) -----------------------------------------
@register("embedkit_consistrm_train")
class ConsistRMTrainRewardManager(GroupRewardManager):
    """ConsistRM self-training in verl: each prompt's `rollout.n` responses are K judgements of one item, scored
    by `agents.rewards.consistrm.ConsistRMReward` (votes, the pseudo-label over rounds, the consistency bonus,
    the format penalty) with `ConsistRMTrainSettings` from `reward.reward_kwargs`.

    Differences from `embedkit rl train`: the pseudo-label memory lives in the reward worker process and is
    not part of verl's checkpoints (a resumed run starts every item's history empty, unless `seed_scores`
    seeds it), and the two presentation orders of a pair are labelled as they arrive (a group per `uid`),
    not pooled within a batch first."""

    settings_model = ConsistRMTrainSettings
    extra_keys = ("acc", "consistrm_label", "group_members")
    what = "ConsistRM's pseudo-labelling"

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, **kwargs: Any) -> None:
        from agents.rewards.consistrm import ConsistRMReward, consistrm

        super().__init__(config, tokenizer, compute_score, **kwargs)
        reward = consistrm(**self.settings.model_dump(exclude=set(GroupSettings.model_fields)))
        assert isinstance(reward, ConsistRMReward)
        self.reward = reward
        self._lock = threading.Lock()  # groups are scored in worker threads; the memory is shared

    def score_members(self, members: list[_Member]) -> list[dict[str, Any]]:
        from agents.rl.reward_registry import RewardBatch

        batch = RewardBatch(prompts=[m.query for m in members], responses=[m.response for m in members],
                            ground_truths=[m.ground_truth for m in members], group_ids=[0] * len(members))  # fmt: skip
        gt = members[0].ground_truth
        item = gt.get("item", members[0].query) if isinstance(gt, dict) else members[0].query
        with self._lock:
            rewards = self.reward(batch)
            label = int(self.reward.last_labels.get(item, 0))
        return [{"acc": float(r), "consistrm_label": label, "group_members": len(members)} for r in rewards]


def reflectrm_train_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                          format_penalty: float = -1.0, **_: Any) -> float:  # fmt: skip
    """verl `custom_reward_function` for training a ReflectRM judge (both tasks, dispatched on the ground
    truth's `task`, as `embedkit rewards build-prompts --kind reflectrm` writes it): 1 for the preferred
    response's letter or a reliable analysis's number, 0 otherwise, `format_penalty` without a readable answer.

        custom_reward_function.path=pkg://agents.rl.verl.rewards custom_reward_function.name=reflectrm_train_score
    """
    from agents.rewards.reflectrm import reflectrm
    from agents.rl.reward_registry import RewardBatch

    if isinstance(ground_truth, dict) and "reliable" in ground_truth:  # parquet gives numpy arrays
        ground_truth = {**ground_truth, "reliable": [int(i) for i in ground_truth["reliable"]]}
    return float(reflectrm(format_penalty)(RewardBatch([""], [solution_str], [ground_truth]))[0])


# -- custom_reward_function: the response against the reference answer ---------------------------------------
@lru_cache(maxsize=8)
def _backend(judge_json: str) -> LLMBackend:
    return build_backend(json.loads(judge_json))  # one HTTP client per judge setting in this process


def judge_reference_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                          **reward_kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """verl `custom_reward_function`: the served judge compares the response with the reference answer.

        custom_reward_function.path=pkg://agents.rl.verl.rewards custom_reward_function.name=judge_reference_score
        +custom_reward_function.reward_kwargs.kind=consistrm
        +custom_reward_function.reward_kwargs.judge.base_url=http://127.0.0.1:8000
        +custom_reward_function.reward_kwargs.judge.model=consistrm

    `kind`: acgenrm, consistrm or reflectrm (the pairwise judges of `agents.rewards.judges`). The reference is
    the ground truth (a string, or a dict's `reference` / `answer`); the question is `extra_info["question"]`
    when present. Score +`win` when the judge prefers the response in both orders, `loss` when it prefers the
    reference in both, 0 otherwise (a tie, disagreeing orders or an unreadable verdict); with
    `on_judge_error: zero` an unreachable judge scores 0 and `judge_error` 1."""
    kwargs = dict(_plain(reward_kwargs))
    kwargs.pop("reward_router_address", None)  # verl adds these when it serves a reward model itself
    kwargs.pop("reward_model_tokenizer", None)
    kind = kwargs.pop("kind", "consistrm")
    if kind not in SETTINGS:
        raise EmbedkitError(f"custom_reward_function.reward_kwargs.kind: unknown judge '{kind}'; "
                            f"choose one of: {', '.join(SETTINGS)}")  # fmt: skip
    settings = read_settings(JudgeRewardSettings, kwargs, where="custom_reward_function.reward_kwargs")
    reference = ground_truth
    if isinstance(ground_truth, dict):
        reference = ground_truth.get("reference", ground_truth.get("answer"))
    if isinstance(reference, list | tuple):
        reference = reference[0] if reference else None
    if reference is None:
        raise EmbedkitError(f"judge_reference_score: sample of '{data_source}' has no reference answer in "
                            "reward_model.ground_truth (a string, or a dict with 'reference')")  # fmt: skip
    question = str((extra_info or {}).get("question", "")) if isinstance(extra_info, dict) else ""
    from agents.rewards.judges import build_judge

    judge = build_judge(kind, _backend(settings.judge.model_dump_json()), **settings.judge_options)
    try:
        seed = settings.seed ^ zlib.crc32(solution_str.encode())  # one order per response, the same every run
        outcomes, stats = pair_outcomes(judge, [(question, solution_str, str(reference))], orders=settings.orders,
                                        rng=random.Random(seed))  # fmt: skip
    except EmbedkitError:
        if settings.on_judge_error == "raise":
            raise
        return {"score": 0.0, "judge_error": 1, "judge_unreadable": 0}
    outcome = outcomes[0]
    score = settings.win if outcome > 0 else settings.loss if outcome < 0 else 0.0
    return {"score": float(score), "judge_error": 0, "judge_unreadable": stats["unreadable"]}


__all__ = ["ACPORewardManager", "ConsistRMRewardManager", "ConsistRMTrainRewardManager", "GroupGate",
           "GroupRewardManager", "JudgeRewardManager", "MANAGER_NAMES", "ReflectRMRewardManager",
           "judge_reference_score", "reflectrm_train_score"]  # fmt: skip

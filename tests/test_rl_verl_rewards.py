"""embedkit's judge reward managers inside verl 0.9.1, loaded and called by verl's own code.

verl's trainer config is composed by hydra from the `ppo_trainer` YAML verl ships; `RewardLoopWorker` (the
class verl's `RewardLoopManager` runs as a Ray actor) builds our manager with `load_reward_manager` and scores a
`DataProto` built as `RayPPOTrainer` builds it (prompt batch, `uid`, `repeat(n, interleave=True)`, rollout
output unioned in); the scores go into `rm_scores` with the manager class's `assemble_rm_scores`, as
`RewardLoopManager.compute_rm_score` does. The judge is a real OpenAI-compatible server process
(`tests/openai_judge_server.py`, a scripted judge: the response that says "good" more often wins).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from verl import DataProto
from verl.experimental.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import resolve_reward_manager_cls

from agents.rl.verl import rewards as verl_rewards
from agents.rl.verl.rewards_scoring import ACPOSettings, read_settings, score_groups
from embedkit.errors import DataFormatError, EmbedkitError
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
N = 3  # responses per prompt (actor_rollout_ref.rollout.n)


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("judge") / "judge.jsonl"
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.openai_judge_server", "--port", str(port),
                                "--log", str(log)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the judge server exited: {process.stderr.read() if process.stderr else ''}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the judge server did not start")
            time.sleep(0.2)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The policy's tokenizer folder (verl's reward worker loads it from actor_rollout_ref.model.path)."""
    from agents.rl.toy import build_char_tokenizer

    folder = tmp_path_factory.mktemp("policy")
    build_char_tokenizer(["<verdict>", "</verdict>", "<critique>", "</critique>", "<choice>", "</choice>"]
                         ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def base_config(tokenizer_dir):
    """`base_config(overrides)`: verl's trainer config as `verl.trainer.main_ppo` gets it, composed by hydra from
    the `ppo_trainer` YAML verl ships, with verl command-line overrides (`+a.b=v` adds a key)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    fixed = [f"actor_rollout_ref.model.path={tokenizer_dir}", f"actor_rollout_ref.rollout.n={N}"]

    def build(overrides: list[str]):
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return compose(config_name="ppo_trainer", overrides=fixed + list(overrides))

    return build


def _config(base, overrides: list[str]):
    return base(overrides)


def _judge_overrides(url: str, manager: str, *extra: str) -> list[str]:
    return [f"reward.reward_manager.name={manager}", "reward.num_workers=1",
            f"+reward.reward_kwargs.judge.base_url={url}", "+reward.reward_kwargs.judge.model=judge",
            "+reward.reward_kwargs.judge.max_retries=0", *extra]  # fmt: skip


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


def _batch(tokenizer, questions: list[str], responses: list[str], ground_truths: list, *,
           uids: list[str] | None = None, repeat: int = N) -> DataProto:  # fmt: skip
    """A batch as verl's trainer has it when rewards are computed: prompts left-padded, responses right-padded."""
    enc = [tokenizer.encode(q) for q in questions]
    width = max(map(len, enc))
    prompt_ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    prompt_mask = torch.zeros(len(enc), width, dtype=torch.long)
    for i, ids in enumerate(enc):
        prompt_ids[i, width - len(ids):] = torch.tensor(ids)
        prompt_mask[i, width - len(ids):] = 1
    prompts = DataProto.from_single_dict({
        "input_ids": prompt_ids, "attention_mask": prompt_mask,
        "position_ids": (prompt_mask.cumsum(-1) - 1).clamp(min=0),
        "raw_prompt": _objects([[{"role": "user", "content": q}] for q in questions]),
        "reward_model": np.array([{"ground_truth": g, "style": "model"} for g in ground_truths], dtype=object),
        "data_source": np.array(["creative"] * len(questions), dtype=object),
        "extra_info": np.array([{"index": i} for i in range(len(questions))], dtype=object),
    })  # fmt: skip
    prompts.non_tensor_batch["uid"] = np.array(uids or [f"u{i}" for i in range(len(questions))], dtype=object)
    batch = prompts.repeat(repeat_times=repeat, interleave=True)
    out = [tokenizer.encode(r) + [tokenizer.eos_token_id] for r in responses]
    length = max(map(len, out)) + 2
    response_ids = torch.full((len(out), length), tokenizer.pad_token_id)
    response_mask = torch.zeros(len(out), length, dtype=torch.long)
    for i, ids in enumerate(out):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    attention = torch.cat([batch.batch["attention_mask"], response_mask], dim=-1)
    rollout = DataProto.from_dict(tensors={
        "prompts": batch.batch["input_ids"], "responses": response_ids,
        "input_ids": torch.cat([batch.batch["input_ids"], response_ids], dim=-1), "attention_mask": attention,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0)})  # fmt: skip
    batch.batch.pop("input_ids"), batch.batch.pop("attention_mask"), batch.batch.pop("position_ids")
    return batch.union(rollout)


def _score(config, data: DataProto) -> tuple[torch.Tensor, list[dict]]:
    """What `RewardLoopManager.compute_rm_score` does with one reward worker, without Ray."""
    async def run() -> list[dict]:
        worker = RewardLoopWorker(config, None)  # built on the loop it serves, as in its Ray actor
        return await worker.compute_score_batch(data)

    outputs = asyncio.run(run())
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    return rm_scores, outputs


def _log_lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


STORIES = ["a good tale", "a good good tale", "a tale"]  # the scripted judge ranks them 2nd, 1st, 3rd


def test_names_are_in_verls_reward_loop_registry_and_importlib_loads_the_same_classes(base_config, tokenizer_dir):
    for name, kind in verl_rewards.MANAGER_NAMES.items():
        cls = get_reward_manager_cls(name)
        assert cls.judge_kind == kind
        config = _config(base_config, ["reward.reward_manager.source=importlib",
                                       "reward.reward_manager.module.path=pkg://agents.rl.verl.rewards",
                                       f"reward.reward_manager.name={cls.__name__}"])  # fmt: skip
        assert resolve_reward_manager_cls(config) is cls


def test_acpo_manager_through_verls_reward_worker(base_config, tokenizer_dir, judge_server):
    url, log = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, _judge_overrides(url, "embedkit_acpo"))
    data = _batch(tok, ["tell a story", "write a poem"], STORIES + ["good", "good", "good good"],
                  [{"long_form": False}, {"long_form": False}])  # fmt: skip
    before = _log_lines(log)
    rm_scores, outputs = _score(config, data)
    # Round robin ±2 per pair, short-form, no planning: no structure penalty, no length term.
    expected = [0.0, 4.0, -4.0, -2.0, -2.0, 4.0]
    prompt_len = data.batch["prompts"].shape[1]
    last = data.batch["attention_mask"][:, prompt_len:].sum(-1) - 1
    assert rm_scores[torch.arange(6), last].tolist() == expected
    assert rm_scores.sum().item() == sum(expected) and (rm_scores != 0).sum() == 5  # only on last tokens
    assert [o["reward_extra_info"]["acc"] for o in outputs] == expected
    assert all(set(o["reward_extra_info"]) == set(verl_rewards.EXTRA_KEYS) for o in outputs)
    assert {o["reward_extra_info"]["group_members"] for o in outputs} == {N}
    # One criteria call and 3 pairs x 2 orders per group, the question (not the chat markup) in each.
    requests = [json.loads(x) for x in log.read_text().splitlines()[before:]]
    assert len(requests) == 2 * (1 + 6)
    assert sum("tell a story" in r["prompt"] for r in requests) == 7


def test_acpo_shaping_on_cases_where_readings_differ(judge_server):
    """ACPO's reward, R_rel + R_struct + R_len (UniCreative, arXiv 2604.05517): expected values worked out by hand.
    R_rel (±2 per pairwise win/loss, summed over the group, judged on the text without planning) and R_struct
    (−5 for a long-form response without planning or a short-form one with it) are the paper's as its summaries
    state them. R_len is the asymmetric penalty those summaries describe, capped at 5: −min(5, (long_min − L)/100)
    for a long-form response under long_min words, −min(5, (L − short_max)/100) for a short-form one over
    short_max, L the words outside planning; long_min (500) and short_max (200, 1 here) are embedkit's values.
    The official code (github.com/weixiaolong94-hub/UniCreative) could not be fetched here, so none of these
    values come from the official program."""
    url, _ = judge_server
    settings = read_settings(ACPOSettings, {"judge": {"base_url": url, "model": "judge", "max_retries": 0},
                                            "length_short_max": 1})  # fmt: skip
    plan = "<plan>good good good good</plan>"
    long_group = ("write a saga", [f"{plan} a good saga", "good good saga", "firstbias saga " + "word " * 150], True)
    short_group = ("a slogan", [f"{plan} good", "good good"], False)
    scored = score_groups("acgenrm", settings, [long_group, short_group])
    # Long form. Judged without planning: "a good saga" (1 good) loses to "good good saga" (2), which a reading that
    # keeps the plan would reverse; the firstbias response gets "A" in both orders, so both its pairs are
    # ties (one order alone would give ±2). R_rel = [-2, +2, 0]. R_struct: the 2nd and 3rd skip planning: -5 each.
    # R_len: 3, 3 and 152 words outside planning, short of 500 by 497, 497, 348 (the plan's 4 words do not count;
    # embedkit's earlier +min(5, L/100) would give +0.03, +0.03, +1.52).
    assert scored.rewards[0] == pytest.approx([-2 - 4.97, 2 - 5 - 4.97, 0 - 5 - 3.48])
    # Short form: "good" (plan stripped) loses to "good good"; the planning one gets -5. R_len: 1 word is not over
    # short_max = 1, 2 words are 1 over: -0.01 (the earlier reading gave short-form responses no length term).
    assert scored.rewards[1] == pytest.approx([-2 - 5, 2 - 0.01])
    assert scored.stats["order_inconsistent"] == 2


@pytest.mark.parametrize("manager,options", [("embedkit_consistrm", []),
                                             ("embedkit_reflectrm", ["+reward.reward_kwargs.judge_options.n_analyses=2"])])
def test_consistrm_and_reflectrm_managers_rank_each_group(base_config, tokenizer_dir, judge_server, manager, options):
    url, log = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, _judge_overrides(url, manager, *options))
    data = _batch(tok, ["tell a story"], STORIES, ["unused"])
    before = _log_lines(log)
    rm_scores, outputs = _score(config, data)
    assert rm_scores.sum(-1).tolist() == [0.0, 4.0, -4.0]
    calls = _log_lines(log) - before
    # ConsistRM: 3 pairs x 2 orders; ReflectRM: per shown pair 2 analyses + 2 reflections (both listing orders).
    assert calls == (6 if manager == "embedkit_consistrm" else 6 * (2 + 2))


def test_unreadable_verdicts_are_ties_and_counted(base_config, tokenizer_dir, judge_server):
    url, _ = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, _judge_overrides(url, "embedkit_consistrm"))
    rm_scores, outputs = _score(config, _batch(tok, ["q"], ["good garble", "good good", "x"], ["-"]))
    # Pairs with the garble response are unreadable (ties); "good good" beats "x".
    assert rm_scores.sum(-1).tolist() == [0.0, 2.0, -2.0]
    assert {o["reward_extra_info"]["judge_unreadable"] for o in outputs} == {4}  # 2 pairs x 2 orders


def test_a_group_that_does_not_fill_is_scored_after_the_wait(base_config, tokenizer_dir, judge_server):
    url, _ = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, _judge_overrides(url, "embedkit_consistrm", "+reward.reward_kwargs.group_wait_s=0.5"))
    rm_scores, outputs = _score(config, _batch(tok, ["q"], ["good", "good good"], ["-"], repeat=2))
    assert rm_scores.sum(-1).tolist() == [-2.0, 2.0]
    assert [o["reward_extra_info"]["group_members"] for o in outputs] == [2, 2]


def test_judge_down_raises_or_scores_zero_as_configured(base_config, tokenizer_dir):
    tok = _tokenizer(tokenizer_dir)
    dead = f"http://127.0.0.1:{free_port()}"
    data = _batch(tok, ["q"], STORIES, ["-"])
    with pytest.raises(EmbedkitError, match=f"{dead}/v1/chat/completions failed after 1 attempts"):
        _score(_config(base_config, _judge_overrides(dead, "embedkit_acpo")), data)
    rm_scores, outputs = _score(_config(base_config, _judge_overrides(
        dead, "embedkit_acpo", "+reward.reward_kwargs.on_judge_error=zero")), data)  # fmt: skip
    assert rm_scores.abs().sum() == 0
    assert [o["reward_extra_info"]["judge_error"] for o in outputs] == [1, 1, 1]


def test_bad_settings_are_refused_with_the_field(base_config, tokenizer_dir, judge_server):
    url, _ = judge_server
    with pytest.raises(EmbedkitError, match="set reward.num_workers=1"):
        RewardLoopWorker(_config(base_config, _judge_overrides(url, "embedkit_acpo", "reward.num_workers=4")), None)
    missing = [x for x in _judge_overrides(url, "embedkit_acpo") if "judge.model" not in x]
    with pytest.raises(DataFormatError, match=r"reward.reward_kwargs: .*field 'judge.model'"):
        RewardLoopWorker(_config(base_config, missing), None)
    with pytest.raises(DataFormatError, match="group_siz"):
        RewardLoopWorker(_config(base_config, _judge_overrides(url, "embedkit_acpo", "+reward.reward_kwargs.group_siz=3")),
                         None)  # fmt: skip


def test_judge_reference_score_as_verls_custom_reward_function(base_config, tokenizer_dir, judge_server):
    url, _ = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, [
        "reward.reward_manager.name=naive", "custom_reward_function.path=pkg://agents.rl.verl.rewards",
        "custom_reward_function.name=judge_reference_score", "+custom_reward_function.reward_kwargs.kind=consistrm",
        f"+custom_reward_function.reward_kwargs.judge.base_url={url}",
        "+custom_reward_function.reward_kwargs.judge.model=judge"])  # fmt: skip
    # verl's trainer copies the legacy custom_reward_function section into reward.* (migrate_legacy_reward_impl).
    from verl.experimental.reward_loop import migrate_legacy_reward_impl

    config = migrate_legacy_reward_impl(config)
    data = _batch(tok, ["q"], ["good good", "good", "bad"], [{"reference": "a good one"}])
    rm_scores, outputs = _score(config, data)
    assert rm_scores.sum(-1).tolist() == [2.0, 0.0, -2.0]
    assert [o["reward_extra_info"]["judge_error"] for o in outputs] == [0, 0, 0]


def test_consistrm_self_training_manager_labels_each_item_over_rounds(base_config, tokenizer_dir):
    """The policy is the judge: each prompt's N responses are K=3 judgements of one pair (votes in the pair's
    canonical order), scored by ConsistRM's reward (1 for agreeing with the pseudo-label, -5 without a verdict)."""
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, ["reward.reward_manager.name=embedkit_consistrm_train", "reward.num_workers=1"])
    first = {"item": "p1", "swapped": False, "round": 0}
    second = {"item": "p2", "swapped": True, "round": 0}  # shown reversed: "b" votes for the pair's first response
    a, b = "<critique>ok</critique> <verdict>a</verdict>", "<critique>ok</critique> <verdict>b</verdict>"
    data = _batch(tok, ["judge pair one", "judge pair two"], [a, a, b, b, "no verdict", a], [first, second])
    rm_scores, outputs = _score(config, data)
    # p1: votes +1 +1 -1 -> label +1 -> 1, 1, 0. p2 (swapped): votes +1, none, -1 -> mean 0 -> no label (tie):
    # the readable ones get tie_reward 0, the unreadable one -5.
    assert rm_scores.sum(-1).tolist() == [1.0, 1.0, 0.0, 0.0, -5.0, 0.0]
    assert [o["reward_extra_info"]["consistrm_label"] for o in outputs] == [1, 1, 1, 0, 0, 0]


def test_reflectrm_training_reward_as_custom_reward_function(base_config, tokenizer_dir):
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, ["reward.reward_manager.name=naive",
                                   "custom_reward_function.path=pkg://agents.rl.verl.rewards",
                                   "custom_reward_function.name=reflectrm_train_score"])  # fmt: skip
    from verl.experimental.reward_loop import migrate_legacy_reward_impl

    config = migrate_legacy_reward_impl(config)
    truths = [{"task": "response", "preferred": "A"}, {"task": "analysis", "reliable": np.array([1]), "n": 3},
              {"task": "response", "preferred": "B"}]  # fmt: skip
    data = _batch(tok, ["which is better", "which analysis", "which is better"],
                  ["<verdict>a</verdict>", "<choice>2</choice>", "i do not know"], truths, repeat=1)  # fmt: skip
    rm_scores, _ = _score(config, data)
    assert rm_scores.sum(-1).tolist() == [1.0, 1.0, -1.0]


def test_a_sample_without_uid_is_scored_alone(base_config, tokenizer_dir, judge_server):
    url, _ = judge_server
    tok = _tokenizer(tokenizer_dir)
    config = _config(base_config, _judge_overrides(url, "embedkit_acpo", "+reward.reward_kwargs.long_form=true"))
    data = _batch(tok, ["q"], ["good good", "good", "x"], ["-"])
    data.non_tensor_batch.pop("uid")
    rm_scores, outputs = _score(config, data)
    # Alone: no pairs; long form without planning: -5, and 2, 1, 1 words are 498, 499, 499 short of 500.
    assert rm_scores.sum(-1).tolist() == pytest.approx([-9.98, -9.99, -9.99])
    assert [o["reward_extra_info"]["group_members"] for o in outputs] == [1, 1, 1]

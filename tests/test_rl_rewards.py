"""Rule rewards and the generative reward models (ConsistRM, ReflectRM, AC-GenRM/ACPO)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from agents.llm import LLMBackend
from agents.rewards.acgenrm import (
    ACGenRM,
    LengthShaping,
    acpo_rewards,
    length_term,
    round_robin_scores,
    strip_planning,
    structure_penalty,
)
from agents.rewards.consistrm import ConsistRMReward, PseudoLabeler, consistrm_item_rewards
from agents.rewards.reflectrm import ReflectRM, analysis_preference_score, response_preference_score
from agents.rl.rewards import RewardBatch, build_reward, countdown_score, f1_score, last_boxed, math_equal


def _batch(responses, golds, groups=None, prompts=None):
    return RewardBatch(prompts=prompts or ["q"] * len(responses), responses=responses, ground_truths=golds,
                       group_ids=groups or [])  # fmt: skip


# ---- one registry, no import cycle --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("first", ["agents.rewards", "agents.rl.rewards", "agents.rl.config"])
def test_reward_registry_has_no_cycle(first):
    """Whichever side is imported first, every reward is listed, and the rule rewards never import the
    reward-model package (nor the reverse)."""
    import subprocess
    import sys

    code = (f"import sys, {first}\n"
            "from agents.rl.reward_registry import REWARDS\n"
            "names = set(REWARDS.names())\n"
            "assert {'exact_match', 'f1', 'format', 'consistrm', 'acpo', 'reflectrm_response'} <= names, names\n"
            f"other = {{'agents.rewards': 'agents.rl.rewards', 'agents.rl.rewards': 'agents.rewards', "
            f"'agents.rl.config': 'agents.rewards'}}['{first}']\n"
            "assert other not in sys.modules, other\n"
            "assert callable(REWARDS.get('acpo')) and callable(REWARDS.get('exact_match'))\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reward_models_and_rule_rewards_share_one_registry():
    import agents.rewards.consistrm as consistrm_module
    import agents.rl.rewards as rule_module
    from agents.rl.reward_registry import REWARDS

    assert rule_module.REWARDS is REWARDS
    assert REWARDS.get("consistrm") is consistrm_module.consistrm
    assert REWARDS.get("format") is rule_module.answer_format


# ---- rule rewards ------------------------------------------------------------------------------------------
def test_exact_match_uses_last_answer_and_normalises():
    reward = build_reward("exact_match", format_penalty=-1.0)
    out = reward(_batch(["<answer>x</answer> then <answer> The  Eiffel tower! </answer>", "no tags", "<answer>y</answer>"],
                        [["eiffel tower"], "a", ["z", "Y"]]))  # fmt: skip
    assert out == [1.0, -1.0, 1.0]


def test_f1():
    assert f1_score("the big red dog", ["red dog"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("yes", ["no"]) == 0.0
    assert build_reward("f1")(_batch(["<answer>red cat</answer>"], [["red dog"]])) == [pytest.approx(0.5)]


def test_math_boxed():
    assert last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert math_equal(r"\frac{1}{2}", "0.5") and math_equal("1,000", "1000") and not math_equal("2", "3")
    reward = build_reward("math_boxed")
    assert reward(_batch([r"\boxed{\dfrac{3}{6}}", "no box", r"\boxed{7}"], ["1/2", "1", "8"])) == [1.0, 0.0, 0.0]


def test_countdown():
    gt = {"target": 24, "numbers": [3, 4, 2]}
    assert countdown_score("<answer>(3 + 4 - 1) * 4</answer>", **gt) == 0.1  # wrong numbers
    assert countdown_score("<answer>3 * 4 * 2</answer>", **gt) == 1.0
    assert countdown_score("<answer>3 * 4 + 2</answer>", **gt) == 0.1
    assert countdown_score("<answer>__import__('os')</answer>", **gt) == 0.0
    assert countdown_score("3*4*2", **gt) == 0.0
    assert build_reward("countdown")(_batch(["<answer>(2+4)*3-0</answer>"], [{"target": 18, "numbers": [2, 4, 3, 0]}])) == [1.0]


# ---- ConsistRM ---------------------------------------------------------------------------------------------
def test_consistrm_pseudo_labels_over_rounds():
    labeler = PseudoLabeler()
    assert labeler.update("x", [1, 1, -1]) == 1  # 1/3 + 0
    assert labeler.update("x", [-1, -1, 1, -1]) == 1  # −1/2 + mean(1) = 1/2
    assert labeler.update("x", [-1, -1, -1]) == 0  # −1 + mean(1, 1) = 0: tie
    assert labeler.update("x", [-1, -1]) == -1  # −1 + mean(1, 1, 0) = −1/3
    assert labeler.update("y", [-1, 1]) == 0  # another item starts fresh
    assert labeler.history["x"] == [1, 1, 0, -1]


VECTORS = {"agree one": [1.0, 0.0], "agree two": [0.9, 0.1], "agree three": [0.8, 0.2], "odd one": [0.0, 1.0]}


def _embed(texts):
    return np.array([VECTORS[t] for t in texts])


def test_consistrm_item_rewards_hand_values():
    texts = ["agree one <verdict>yes</verdict>", "agree two <verdict>no</verdict>",
             "agree three <verdict>yes</verdict>", "odd one <verdict>yes</verdict>", "rambling"]  # fmt: skip
    # consistency (mean cosine to the others): "agree two" and "agree three" are the two most consistent
    out = consistrm_item_rewards(texts, 1, _embed, top_p=0.5, bonus=0.1, format_penalty=-5.0)
    assert out == [1.0, 0.0, pytest.approx(1.1), 1.0, -5.0]
    tie = consistrm_item_rewards(texts, 0, _embed)
    assert tie == [None, None, None, None, -5.0]


def test_consistrm_reward_tracks_rounds_per_item():
    reward = ConsistRMReward(None)
    batch = _batch(["<verdict>yes</verdict>", "<verdict>no</verdict>", "<verdict>no</verdict>", "<verdict>no</verdict>"],
                   [None] * 4, groups=[0, 0, 1, 1], prompts=["item a", "item a", "item b", "item b"])  # fmt: skip
    assert reward(batch) == [0.0, 0.0, 1.0, 1.0]  # item a ties (no supervision), item b → "no"
    assert reward.last_labels == {"item a": 0, "item b": -1}


def test_consistrm_with_real_minilm_embeddings(minilm_encoder):
    def embed(texts):  # what encoder_embed() builds, on the session's already loaded encoder
        return minilm_encoder.encode_queries(list(texts))

    texts = ["The sum 2 + 2 equals 4, so the response is right. <verdict>yes</verdict>",
             "Two plus two is four; the response computes it correctly. <verdict>yes</verdict>",
             "Penguins live in Antarctica and eat fish. <verdict>yes</verdict>",
             "Adding 2 and 2 gives 4, which the response states. <verdict>no</verdict>"]  # fmt: skip
    out = consistrm_item_rewards(texts, 1, embed, top_p=0.5)
    assert out[2] == 1.0  # the off-topic critique is not among the consistent half
    assert out[3] == 0.0  # consistent, but it does not carry the pseudo-label
    assert sorted(out[:2]) in ([1.0, pytest.approx(1.1)], [pytest.approx(1.1), pytest.approx(1.1)])


# ---- judges over a scripted LLM ----------------------------------------------------------------------------
class ScriptedLLM:
    """A deterministic stand-in LLM: answers each prompt through `reply(prompt)`."""

    def __init__(self, reply):
        self.reply = reply
        self.prompts = []

    def generate(self, prompts, *, max_new_tokens, temperature, stop):
        self.prompts += prompts
        return [self.reply(p) for p in prompts]


def _longer_wins(prompt: str) -> str:
    if "<criteria>" in prompt:
        return "<criteria>completeness</criteria>"
    a = re.search(r"Response A: (.*?)\n\nResponse B:", prompt, re.DOTALL).group(1)
    b = re.search(r"Response B: (.*)\n", prompt, re.DOTALL).group(1)
    return "<verdict>A</verdict>" if len(a) > len(b) else "<verdict>B</verdict>" if len(b) > len(a) else "<verdict>tie</verdict>"


def test_round_robin_totals():
    wins = {(0, 1): 1, (0, 2): 1, (1, 2): -1}
    assert round_robin_scores(3, lambda i, j: wins[(i, j)]) == [4.0, -4.0, 0.0]
    assert round_robin_scores(3, lambda i, j: 0) == [0.0, 0.0, 0.0]


def test_acpo_rewards_round_robin_structure_and_length():
    llm = ScriptedLLM(_longer_wins)
    assert isinstance(llm, LLMBackend)
    judge = ACGenRM(llm, seed=3)
    responses = ["<plan>a very long plan that would win if it were not stripped</plan> short",
                 "a medium answer", "a much longer final answer"]  # fmt: skip
    # stripped lengths: 5 < 15 < 26 → round robin [−4, 0, +4]; short-form: planning costs −5
    out = acpo_rewards("q", responses, judge, long_form=False)
    assert out == [-4.0 - 5.0, 0.0, 4.0]
    long = acpo_rewards("q", responses, judge, long_form=True, length=LengthShaping(length_long_min=6, length_unit=1))
    # long-form: the unplanned responses pay −5; R_len −min(5, 6 − words) with 1, 3 and 5 words
    assert long == [-4.0 - 5.0, 0.0 - 5.0 - 3.0, 4.0 - 5.0 - 1.0]
    compare_prompts = [p for p in llm.prompts if "Criteria:" in p]
    assert all("<plan>" not in p for p in compare_prompts)
    # random order swaps: both presentation orders occur and the verdict is mapped back
    firsts = {re.search(r"Response A: (.*?)\n", p).group(1) for p in compare_prompts}
    assert len(firsts) == 3


def test_acpo_pieces():
    assert strip_planning("<think>x</think> hi  <plan>y</plan>there") == "hi there"
    assert structure_penalty("<plan>p</plan> a", long_form=True) == 0.0
    assert structure_penalty("a", long_form=True) == -5.0 and structure_penalty("a", long_form=False) == 0.0
    assert length_term("w " * 1000, long_form=True) == 0.0 and length_term("w w", long_form=False) == 0.0
    assert length_term("w " * 1000, long_form=False) == -5.0 and length_term("w w", long_form=True) == -4.98


def test_reflectrm_takes_verdict_of_chosen_analysis():
    verdicts = iter(["x <verdict>A</verdict>", "y <verdict>B</verdict>", "z <verdict>B</verdict>", "w <verdict>A</verdict>"])

    def reply(prompt):
        return "<choice>4</choice>" if "most reliable" in prompt else next(verdicts)

    result = ReflectRM(ScriptedLLM(reply), n_analyses=4).judge("q", "ra", "rb")
    assert result.preferred == "A" and result.chosen == 3 and result.verdicts == ["A", "B", "B", "A"]


def test_reflectrm_falls_back_to_majority():
    verdicts = iter(["<verdict>B</verdict>", "<verdict>B</verdict>", "<verdict>A</verdict>"])

    def reply(prompt):
        return "I cannot decide" if "most reliable" in prompt else next(verdicts)

    result = ReflectRM(ScriptedLLM(reply), n_analyses=3).judge("q", "ra", "rb")
    assert result.preferred == "B" and result.chosen is None


def test_reflectrm_training_rewards():
    assert response_preference_score("... <verdict>B</verdict>", "b") == 1.0
    assert response_preference_score("... <verdict>A</verdict>", "B") == 0.0
    assert response_preference_score("no verdict", "B") == -1.0
    assert analysis_preference_score("<choice>2</choice>", reliable=[1, 3], n=4) == 1.0
    assert analysis_preference_score("<choice>1</choice>", reliable=[1, 3], n=4) == 0.0
    assert analysis_preference_score("<choice>9</choice>", reliable=[1], n=4) == -1.0
    reward = build_reward("reflectrm_analysis")
    assert reward(_batch(["<choice>1</choice>"], [{"reliable": [0], "n": 2}])) == [1.0]

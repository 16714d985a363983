"""ACPO's length term R_len (`agents.rewards.acgenrm.LengthShaping`) on cases where readings give different numbers.

Every expected value is worked by hand from ACPO's reward composition (UniCreative, arXiv 2604.05517):
R_total = R_rel + R_struct + R_len, with R_len as the paper's summaries state it: asymmetric (a long-form response
pays for being too short, a short-form one for being too long) and capped at γ = 5:

    long form:   R_len = −min(γ, coef · max(0, long_min − L) / unit)
    short form:  R_len = −min(γ, coef · max(0, L − short_max) / unit)

L is the number of words outside planning. long_min = 500, short_max = 200, unit = 100 and coef = 1 are
embedkit's defaults: the paper's own values could not be read here (see the module docstring of
agents/rewards/acgenrm.py). "long_bonus" is embedkit's earlier reading, +min(γ, coef · L / unit) on long-form
tasks only.
"""

from __future__ import annotations

import pytest

from agents.rewards.acgenrm import ACGenRM, LengthShaping, acpo_group_rewards, length_term
from agents.rl.reward_registry import build_reward
from embedkit.errors import DataFormatError
from tests.test_rl_rewards import ScriptedLLM


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


PLAN = "<plan>" + words(600, "outline") + "</plan> "


@pytest.mark.parametrize(
    "text,long_form,paper,long_bonus",
    [
        (words(250), False, -0.5, 0.0),  # short form, 50 words over 200: −min(5, 50/100)
        (words(900), False, -5.0, 0.0),  # short form, 700 over: −min(5, 7) is the cap
        (words(120), True, -3.8, 1.2),  # long form, 380 words short of 500: −min(5, 3.8); bonus min(5, 1.2)
        (words(650), True, 0.0, 5.0),  # long form, long enough: no penalty; bonus at its cap
        (PLAN + words(50), True, -4.5, 0.5),  # the 600-word plan is not counted: 450 short of 500
    ],
)
def test_asymmetric_penalty_against_the_long_form_bonus(text, long_form, paper, long_bonus):
    assert length_term(text, long_form) == pytest.approx(paper)
    assert length_term(text, long_form, length_mode="long_bonus") == pytest.approx(long_bonus)
    assert length_term(text, long_form, length_mode="none") == 0.0


@pytest.mark.parametrize("n", [0, 1, 120, 499, 500, 501, 2000])
def test_long_form_penalty_is_the_bonus_shifted_by_the_cap(n):
    """With long_min = cap · unit / coef (the defaults) the two readings differ by γ on every long-form response,
    so GRPO's group-normalised advantages agree there; they differ on short-form tasks only."""
    assert length_term(words(n), True) == pytest.approx(length_term(words(n), True, length_mode="long_bonus") - 5.0)


def test_distinct_words_gives_padding_nothing_and_still_charges_it():
    padded = "useful answer " + words(600, "filler")  # 602 words, 3 distinct
    assert length_term(padded, True) == 0.0
    assert length_term(padded, True, length_count="distinct_words") == pytest.approx(-4.97)  # 497 short
    # short form: the excess counts every word, repeated or not (300 − 200 over)
    assert length_term(words(300, "good"), False, length_count="distinct_words") == pytest.approx(-1.0)
    assert length_term(words(300, "good"), False) == pytest.approx(-1.0)


def test_settings_move_thresholds_slope_and_cap():
    shaping = LengthShaping(length_short_max=10, length_long_min=30, length_coef=2.0, length_unit=10, length_cap=3.0)
    assert shaping.term(words(14), False) == pytest.approx(-0.8)  # −min(3, 2 · 4 / 10)
    assert shaping.term(words(25), False) == pytest.approx(-3.0)  # −min(3, 2 · 15 / 10) = cap
    assert shaping.term(words(26), True) == pytest.approx(-0.8)  # −min(3, 2 · 4 / 10)
    assert shaping.term(words(10), False) == 0.0 and shaping.term(words(30), True) == 0.0


def test_group_rewards_add_the_length_term_to_structure_and_round_robin():
    """A judge that ties every pair (R_rel = 0): each reward is R_struct + R_len."""
    judge = ACGenRM(ScriptedLLM(lambda p: "<criteria>c</criteria>" if "<criteria>" in p else "<verdict>tie</verdict>"))
    groups = [("write a saga", ["<plan>outline</plan> " + words(120), words(650)], True),
              ("a slogan", ["<plan>x</plan> " + words(20), words(250)], False)]  # fmt: skip
    paper = acpo_group_rewards(groups, judge)
    # long form: planned 120 words −3.8; unplanned 650 words −5 (structure) + 0
    # short form: planned −5 (structure) + 0; 250 words: 0 − 0.5
    assert paper == [pytest.approx([-3.8, -5.0]), pytest.approx([-5.0, -0.5])]
    bonus = acpo_group_rewards(groups, judge, length=LengthShaping(length_mode="long_bonus"))
    assert bonus == [pytest.approx([1.2, 0.0]), pytest.approx([-5.0, 0.0])]


@pytest.mark.parametrize(
    "settings,field",
    [({"length_mode": "words"}, "length_mode"), ({"length_unit": 0}, "length_unit"),
     ({"length_cap": -1}, "length_cap"), ({"length_min": 5}, "length_min")],
)  # fmt: skip
def test_bad_length_settings_name_the_field(settings, field):
    backend = {"kind": "openai", "base_url": "http://127.0.0.1:9", "model": "judge"}
    with pytest.raises(DataFormatError, match=f"reward.params: .*'{field}'"):
        build_reward("acpo", backend=backend, **settings)

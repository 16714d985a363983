"""Compression-fidelity probes: the metrics by hand, and the probes on a tiny CoCoA-trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedkit.cli import main
from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.trainer import CocoaTrainer
from embedkit.errors import DataFormatError
from embedkit.fidelity import PLANTED_TEXTS, EosCompressor, read_probe_texts, run_probes
from embedkit.fidelity import metrics as m
from embedkit.multimodal.sequence import MultimodalInput
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)


def test_bleu_matches_hand_computation():
    ref = "the cat sat on the mat".split()
    assert m.corpus_bleu([ref], [ref]) == pytest.approx(1.0)
    assert m.corpus_bleu([ref], [["dog"]]) == 0.0
    hyp = "the cat sat on a mat".split()
    # unigrams 5/6, bigrams 3/5 (+1 smoothing: 4/6), trigrams 2/4 (3/5), 4-grams 1/3 (2/4); no brevity penalty
    expected = np.exp((np.log(5 / 6) + np.log(4 / 6) + np.log(3 / 5) + np.log(2 / 4)) / 4)
    assert m.corpus_bleu([ref], [hyp]) == pytest.approx(expected)
    short = "the cat".split()
    assert m.corpus_bleu([ref], [short]) < m.corpus_bleu([ref], [hyp])  # brevity penalty


def test_token_recovery_facts_and_roles():
    assert m.exact_token_recovery([1, 2, 3, 4], [1, 9, 3]) == 0.5
    assert m.preserved(["white strawberry", "42"], "The red strawberry cost 42 dollars") == [False, True]
    assert m.role_outcome("Alice", "hit", "Bob", "alice hit bob .") == "preserved"
    assert m.role_outcome("Alice", "hit", "Bob", "Bob hit Alice") == "swapped"
    assert m.role_outcome("Alice", "hit", "Bob", "Carol hit Bob") == "lost"
    assert m.swap_roles("Alice hit Bob near Bobby .", "Alice", "Bob") == "Bob hit Alice near Bobby ."


def test_effective_rank_and_entropy():
    assert m.effective_rank(np.eye(5)) == pytest.approx(5.0)
    assert m.effective_rank(np.outer(np.arange(1, 5), np.ones(3))) == pytest.approx(1.0)
    assert m.effective_rank(np.diag([3.0, 1.0])) == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    assert m.entropy(np.full(8, 1 / 8)) == pytest.approx(np.log(8))


def test_probe_text_files(tmp_path):
    plain = tmp_path / "t.txt"
    plain.write_text("Alice paid Bob 42 dollars in 2019 .\n\n")
    [probe] = read_probe_texts(plain)
    assert probe.entities == ["Bob"] and probe.numbers == ["42", "2019"]
    rich = tmp_path / "t.jsonl"
    rich.write_text(json.dumps({"text": "Erin chased Frank", "roles": {"agent": "Erin", "action": "chased",
                                                                        "patient": "Frank"}}) + "\n{bad\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_probe_texts(rich)


@pytest.mark.slow
def test_probes_on_a_cocoa_trained_tiny_model(tmp_path):
    """Stage-2 training on the planted texts makes reconstruction from <EOS> better than random init."""
    model = cached_tiny_vlm("qwen2-vl")
    texts = PLANTED_TEXTS[:4]
    before = run_probes(EosCompressor.from_path(str(model), device="cpu"), texts, max_new_tokens=10)
    config = CocoaConfig.model_validate({
        "model": {"name_or_path": str(model), "max_length": 32},
        "stage1": {"steps": 0}, "stage2": {"steps": 30, "learning_rate": 3e-3},
        "optim": {"batch_size": 4}, "run": {"output_dir": str(tmp_path / "run"), "save_every": 1000, "device": "cpu"}})
    trainer = CocoaTrainer(config)
    out = trainer.pretrain([MultimodalInput(text=t.text) for t in texts])
    after = run_probes(EosCompressor.from_path(str(out), device="cpu"), texts, max_new_tokens=10)
    assert after.reconstruction_nll < before.reconstruction_nll - 1.0
    assert after.bleu > before.bleu
    assert after.exact_token_recovery > before.exact_token_recovery
    assert sum(after.roles.values()) == 4
    assert 1.0 <= after.effective_rank <= 4.0 + 1e-6
    assert after.mean_decoding_entropy < before.mean_decoding_entropy
    assert -1.0 <= after.swap_cosine <= 1.0
    assert len(after.rows) == 4 and after.rows[0]["text"] == "Alice hit Bob ."

    report_path = tmp_path / "report.json"
    assert main(["fidelity", "--model", str(out), "--texts", str(_texts_file(tmp_path, texts)),
                 "--max-new-tokens", "10", "--device", "cpu", "--out", str(report_path)]) == 0
    saved = json.loads(report_path.read_text())
    assert saved["texts"] == 4 and saved["bleu"] == pytest.approx(after.bleu)


def _texts_file(tmp_path, texts):
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(t.model_dump_json() + "\n" for t in texts))
    return path

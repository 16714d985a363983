"""`embedkit eval --mteb` evaluates a model folder through the mteb package, offline, on a tiny STS task with
local data defined here (`MODULE:CLASS`); the JSON holds mteb's scores, checked against a Spearman
correlation computed here from the model's own embeddings."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("mteb")

from embedkit.training.tiny import build_tiny_bert  # noqa: E402
from tests.test_index_integrity import ROOT, assert_user_error, embedkit  # noqa: E402

PAIRS = [("the protein of the cell", "protein in the cell", 1.0), ("the king was born", "the capital city", 0.2),
         ("film music band", "music band album", 0.9), ("heart disease risk", "gene dna rna", 0.0),
         ("cancer treatment study", "patients treatment of cancer", 0.8)]

TASK_MODULE = '''
from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

PAIRS = {pairs!r}


class TinySTS(AbsTaskSTS):
    metadata = TaskMetadata(
        type="STS", name="TinySTS", main_score="cosine_spearman",
        description="A five-pair local STS task for embedkit's tests.", reference="https://example.org/tiny-sts",
        dataset={{"path": "local/tiny-sts", "revision": "1"}}, category="t2t", eval_splits=["test"],
        eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"), dialect=["Written"], domains=[],
        task_subtypes=[], license="cc-by-4.0", annotations_creators="derived", modalities=["text"],
        sample_creation="found", bibtex_citation="")
    min_score = 0
    max_score = 1

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = DatasetDict({{"test": Dataset.from_dict({{
            "sentence1": [a for a, _, _ in PAIRS], "sentence2": [b for _, b, _ in PAIRS],
            "score": [s for _, _, s in PAIRS]}})}})
        self.data_loaded = True
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb")
    (root / "tiny_tasks.py").write_text(textwrap.dedent(TASK_MODULE.format(pairs=PAIRS)))
    model = build_tiny_bert(root / "model", seed=0, pooling="mean")
    env = {"PYTHONPATH": f"{root}:{ROOT}", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MTEB_CACHE": str(root / "mteb-cache")}
    return root, model, env


def test_eval_mteb_writes_the_scores_of_a_local_task(setup, tmp_path):
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    root, model, env = setup
    out = tmp_path / "mteb.json"
    result = embedkit("eval", "--model", model, "--mteb", "tiny_tasks:TinySTS", "--json", out, "--device", "cpu",
                      env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    (task,) = summary["tasks"]
    assert task["task"] == "TinySTS" and task["type"] == "STS" and task["main_score_name"] == "cosine_spearman"
    encoder = SentenceTransformer(str(model), device="cpu")
    a = encoder.encode([p[0] for p in PAIRS], normalize_embeddings=True)
    b = encoder.encode([p[1] for p in PAIRS], normalize_embeddings=True)
    expected = spearmanr((a * b).sum(axis=1), [p[2] for p in PAIRS]).statistic
    assert task["main_score"] == pytest.approx(expected, abs=1e-6)
    assert task["scores"]["test"][0]["cosine_spearman"] == pytest.approx(expected, abs=1e-6)
    assert f"TinySTS (STS): cosine_spearman {expected:.4f}" in result.stdout
    assert not [p for p in (root / "mteb-cache").rglob("*") if p.is_file()]  # results go to --json only


@pytest.mark.parametrize(("args", "needle"), [
    (["--mteb", "tiny_tasks:NoSuchTask"], "cannot import the task"),
    (["--mteb", "json:dumps"], "not an mteb task class"),
    (["--mteb", "NoSuchMtebTask"], "unknown mteb task"),
])
def test_eval_mteb_user_errors(setup, args, needle):
    root, model, env = setup
    assert_user_error(embedkit("eval", "--model", model, *args, env=env), needle)


def test_eval_mteb_needs_a_model_and_no_run(setup):
    root, model, env = setup
    assert_user_error(embedkit("eval", "--mteb", "tiny_tasks:TinySTS", env=env), "--mteb evaluates --model")
    assert_user_error(embedkit("eval", env=env), "give --run and --qrels")

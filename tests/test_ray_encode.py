"""Ray Data encoding on a local Ray instance gives the same shards (and index) as encoding in one process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit.encoding import Encoder, EncoderConfig
from embedkit.encoding.shards import encode_shards, open_shards
from embedkit.index.lifecycle import merge_indexes
from embedkit.training.tiny import build_tiny_bert

pytestmark = pytest.mark.slow  # Ray workers

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_pipeline_matches_single_process(tmp_path, local_ray):
    from embedkit.encoding.ray_encode import encode_with_ray

    model = build_tiny_bert(tmp_path / "tiny", seed=11, hidden_size=32, layers=1)
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for i in range(60):
            handle.write(json.dumps({"_id": f"r{i}", "text": " ".join(rng.choice(["gene", "cell", "virus", "dna"], 6))}) + "\n")
    config = EncoderConfig(model=str(model), batch_size=8, device="cpu")
    count = encode_with_ray(corpus, tmp_path / "ray-shards", config, workers=2, num_shards=3, part_size=7)
    assert count == 60
    encode_shards(corpus, tmp_path / "local", Encoder(config), part_size=7)
    by_ray, local = open_shards(tmp_path / "ray-shards"), open_shards(tmp_path / "local")
    assert by_ray.manifest.num_shards == 3 and sorted(by_ray.parts) == sorted(local.parts) == list(range(9))
    for (docs_a, vectors_a), (docs_b, vectors_b) in zip(by_ray.iter_chunks(), local.iter_chunks(), strict=True):
        assert docs_a == docs_b
        np.testing.assert_allclose(vectors_a, vectors_b, atol=1e-6)
    index = merge_indexes([tmp_path / "ray-shards"], tmp_path / "index")
    assert (index / "manifest.json").exists()

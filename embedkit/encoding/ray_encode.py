"""Encoding on a Ray cluster: a Ray Data pipeline whose actors each hold one model replica.

    from embedkit.encoding import EncoderConfig
    from embedkit.encoding.ray_encode import encode_with_ray
    encode_with_ray("corpus.jsonl", "/shared/shards", EncoderConfig(model="..."), workers=8, address="auto")
    # then merge_indexes(["/shared/shards"], "indexes/big")

The dataset holds the shard ids 0..num_shards-1. `map_batches` with a callable class starts `workers` actors
(one GPU each when the cluster has GPUs); each actor loads the model once and runs
`embedkit.encoding.shards.encode_shards` for the shard ids it receives, writing checkpointed parts to the
shared folder. More shards than workers balances uneven machines; a failed or killed job run again resumes
from the checkpoints. `out` and `corpus` must be reachable at the same path from every node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.data.corpus import FieldMap
from embedkit.encoding.config import EncoderConfig
from embedkit.encoding.shards import StoreDtype, open_shards
from embedkit.errors import EmbedkitError


class ShardEncoder:
    """Ray Data callable class: one model replica per actor, one shard per input row."""

    def __init__(self, corpus: str, out: str, config_json: str, fields: tuple, num_shards: int, part_size: int,
                 dtype: StoreDtype) -> None:
        from embedkit.encoding.encoder import Encoder

        self.encoder = Encoder(EncoderConfig.model_validate_json(config_json))
        self.corpus, self.out, self.fields = corpus, out, FieldMap(*fields)
        self.num_shards, self.part_size, self.dtype = num_shards, part_size, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from embedkit.encoding.shards import encode_shards

        shard_ids, documents = [], []
        for shard_id in batch["id"].tolist():
            checkpoint = encode_shards(self.corpus, self.out, self.encoder, fields=self.fields, shard_id=int(shard_id),
                                       num_shards=self.num_shards, part_size=self.part_size, dtype=self.dtype)
            shard_ids.append(int(shard_id))
            documents.append(checkpoint.documents)
        return {"shard": np.array(shard_ids, dtype=np.int64), "documents": np.array(documents, dtype=np.int64)}


def encode_with_ray(corpus: str | Path, out: str | Path, config: EncoderConfig, *, fields: FieldMap | None = None,
                    address: str | None = None, workers: int = 2, num_shards: int | None = None,
                    part_size: int = 8192, dtype: StoreDtype = "float32", gpus_per_worker: float | None = None,
                    cpus_per_worker: float = 1.0, init_options: dict | None = None) -> int:
    """Encode `corpus` into shard folder `out` on Ray; returns the number of documents encoded.

    Connects to `address` (e.g. "auto" or "ray://head:10001"), or uses the running/local Ray instance.
    """
    try:
        import ray
    except ImportError:
        raise EmbedkitError("--ray needs Ray: pip install 'embedkit[ray]'") from None

    num_shards = num_shards or workers
    if workers < 1 or num_shards < 1:
        raise EmbedkitError("--ray-workers and --num-shards must be at least 1")
    corpus, out = str(Path(corpus).resolve()) if Path(corpus).exists() else str(corpus), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        try:
            ray.init(address=address, **(init_options or {}))
        except ConnectionError as error:  # `--ray-address auto` with no cluster running, an unreachable head
            raise EmbedkitError(f"cannot connect to Ray at {address or 'the local instance'}: {error} "
                                "(start one with `ray start --head`, or leave out --ray-address)") from None
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    fields = fields or FieldMap()
    config = config.model_copy(update={"device": "cuda" if gpus_per_worker > 0 else config.device})
    # from_items keeps the (tiny) shard list in the object store: no read tasks competing with the actors for CPUs.
    dataset = ray.data.from_items([{"id": shard} for shard in range(num_shards)]).map_batches(
        ShardEncoder,
        batch_size=1,
        concurrency=min(workers, num_shards),
        num_gpus=gpus_per_worker,
        num_cpus=cpus_per_worker,
        fn_constructor_kwargs={
            "corpus": corpus, "out": str(out), "config_json": config.model_dump_json(),
            "fields": (fields.id_field, fields.text_field, fields.title_field), "num_shards": num_shards,
            "part_size": part_size, "dtype": dtype,
        },
    )
    finished = dataset.take_all()
    if sorted(row["shard"] for row in finished) != list(range(num_shards)):
        raise EmbedkitError(f"Ray finished shards {sorted(row['shard'] for row in finished)} of {num_shards}")
    return open_shards(out).num_docs

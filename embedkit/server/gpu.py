"""FAISS on GPUs the way large retrieval servers use it: float16 storage, the index sharded over every visible GPU.

A 21M x 768 Flat index (wiki-18 with e5-base) is 64 GB in float32: too big for one GPU, but in float16 and
split across the GPUs each holds a slice, and every query batch is searched on all of them in parallel
(`GpuMultipleClonerOptions(shard=True, useFloat16=True)`, as Search-R1's retrieval server does).
Restrict the GPUs with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

from embedkit.errors import EmbedkitError


def clone_to_gpus(cpu_index, *, float16: bool = True, shard: bool = True):
    """A GPU copy of `cpu_index` over all visible GPUs (sharded, float16 by default)."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not hasattr(faiss, "GpuMultipleClonerOptions") or gpus == 0:
        raise EmbedkitError("backend 'faiss-gpu' needs faiss-gpu and a CUDA GPU (pip install 'embedkit[gpu]'); "
                            "use --backend torch for exact GPU search without faiss-gpu, or --backend faiss on CPU")
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = float16
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index, co=options)
    except RuntimeError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise EmbedkitError(f"cannot copy this index to {gpus} GPU(s): {lines[-1] if lines else error} "
                            "(FAISS GPUs support Flat, IVF-Flat, IVF-PQ and IVF-SQ; try --backend torch)") from None

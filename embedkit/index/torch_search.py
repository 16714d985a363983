"""Exact search on torch: matrix products with chunked top-k, on a GPU (fp16) or the CPU (fp32).

GPU search without depending on faiss-gpu packaging. The document matrix lives on the device in chunks of
`chunk_rows`; each query batch is multiplied with every chunk and the running top-k is merged, so memory
beyond the matrix is one (queries × chunk) score block.

    searcher = TorchExactSearch(vectors, rows, metric="ip", device="cuda")
    scores, found_rows = searcher.search(queries, k=10)     # same conventions as faiss: L2 returns distances
    live = searcher.live_mask(deleted_rows)                  # rows to skip, as a mask kept beside the matrix
    scores, found_rows = searcher.search(queries, k=10, live=live)

A segmented folder (`embedkit.index.segments`) keeps one searcher per segment holding every stored row, and a
mask of its deleted rows: a reload after a removal recomputes the mask, not the matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from embedkit.encoding.device import pick_device
from embedkit.errors import EmbedkitError


class TorchExactSearch:
    """Brute-force k-NN over `vectors` (rows labelled by `rows`) by inner product or squared L2."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray | None = None, *, metric: str = "ip",
                 device: str = "auto", dtype: str = "auto", chunk_rows: int = 262_144,
                 query_batch: int = 1024) -> None:
        if metric not in ("ip", "l2"):
            raise EmbedkitError(f"unknown metric '{metric}' (ip or l2)")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise EmbedkitError(f"expected a 2-d matrix of vectors, got shape {vectors.shape}")
        self.metric, self.device = metric, torch.device(pick_device(device) if device != "auto" else _auto())
        # fp16 halves memory and doubles throughput on GPUs; CPUs have no fast fp16 matmul, so fp32 there.
        self.dtype = _dtype(dtype, self.device)
        self.dim, self.ntotal = vectors.shape[1], vectors.shape[0]
        self.rows = torch.as_tensor(np.arange(self.ntotal) if rows is None else np.asarray(rows, dtype=np.int64))
        if len(self.rows) != self.ntotal:
            raise EmbedkitError(f"{len(self.rows)} row ids for {self.ntotal} vectors")
        self.query_batch, self.chunk_rows = query_batch, chunk_rows
        self.chunks: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        for start in range(0, self.ntotal, chunk_rows):
            part = torch.from_numpy(np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32))
            if metric == "l2":
                self.norms.append((part * part).sum(dim=1).to(self.device))  # norms in fp32 for accuracy
            self.chunks.append(part.to(self.device, self.dtype))

    def live_mask(self, excluded_rows: np.ndarray) -> torch.Tensor | None:
        """A mask (on the search device) of the vectors whose row is not in `excluded_rows`; None: all live."""
        excluded = np.asarray(excluded_rows, dtype=np.int64)
        if len(excluded) == 0:
            return None
        return torch.from_numpy(~np.isin(self.rows.numpy(), excluded)).to(self.device)

    def search(self, queries: np.ndarray, k: int, *, live: torch.Tensor | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of shape (n, k); rows -1 where fewer than k vectors exist. L2 gives squared distances.

        `live` (from `live_mask`) leaves out the vectors it marks False."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise EmbedkitError(f"query vectors have dim {queries.shape[1]}, the index has {self.dim}")
        if live is not None and len(live) != self.ntotal:
            raise EmbedkitError(f"a mask of {len(live)} rows for {self.ntotal} vectors")
        searchable = self.ntotal if live is None else int(live.sum())
        k_eff = min(max(1, k), searchable)  # 0 for an empty index: every hit is padding
        all_scores, all_rows = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), self.query_batch):
                q = torch.from_numpy(queries[start : start + self.query_batch]).to(self.device)
                scores, positions = self._search_batch(q, k_eff, live)
                if positions.numel():
                    scores = self._exact(q, positions)
                all_scores.append(scores.float().cpu())
                all_rows.append(self.rows[positions.cpu()])
        score_array = torch.cat(all_scores).numpy() if all_scores else np.zeros((0, k_eff), np.float32)
        row_array = torch.cat(all_rows).numpy() if all_rows else np.zeros((0, k_eff), np.int64)
        if self.metric == "l2":
            score_array = -score_array
        if k_eff < k:  # pad like faiss does
            score_array = np.pad(score_array, ((0, 0), (0, k - k_eff)),
                                 constant_values=-np.inf if self.metric == "ip" else np.inf)
            row_array = np.pad(row_array, ((0, 0), (0, k - k_eff)), constant_values=-1)
        return score_array.astype(np.float32), row_array.astype(np.int64)

    def _exact(self, q: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The scores of `positions` recomputed in float64 and rounded to float32 (l2: minus the distance).

        Matrix products round differently with the shape of the matrix (BLAS picks kernels by size), so one
        vector could score a few ulps apart in two segments' matrices; recomputed alone, equal vectors score
        equally wherever they are, and the tie rule (lower row first) decides, as it does with FAISS."""
        work = torch.device("cpu") if self.device.type == "mps" else self.device  # MPS has no float64
        out = torch.empty(positions.shape, dtype=torch.float64, device=work)
        q64 = q.to(work, torch.float64)
        step = max(1, (1 << 22) // max(1, positions.shape[1] * self.dim))  # bounds the gathered block
        for start in range(0, len(q), step):
            found = self._vectors_at(positions[start : start + step]).to(work, torch.float64)
            query = q64[start : start + step, None, :]
            out[start : start + step] = (found * query).sum(-1) if self.metric == "ip" else -((found - query) ** 2).sum(-1)
        return out.float()

    def _vectors_at(self, positions: torch.Tensor) -> torch.Tensor:
        flat = positions.reshape(-1)
        found = torch.empty((len(flat), self.dim), dtype=self.dtype, device=self.device)
        chunk_of = torch.div(flat, self.chunk_rows, rounding_mode="floor")
        for number, chunk in enumerate(self.chunks):
            selected = chunk_of == number
            if selected.any():
                found[selected] = chunk[flat[selected] - number * self.chunk_rows]
        return found.reshape(*positions.shape, self.dim)

    def _search_batch(self, q: torch.Tensor, k: int, live: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        best_scores: torch.Tensor | None = None
        best_positions: torch.Tensor | None = None
        q_low = q.to(self.dtype)
        q_norm = (q * q).sum(dim=1, keepdim=True) if self.metric == "l2" else None
        offset = 0
        for index, chunk in enumerate(self.chunks):
            scores = (q_low @ chunk.T).float()
            if q_norm is not None:  # l2: rank by -||q - x||² = 2 q·x - ||x||² - ||q||²
                scores = 2 * scores - self.norms[index][None, :] - q_norm
            if live is not None:  # masked vectors rank below every live one (k never exceeds the live count)
                scores = scores.masked_fill(~live[offset : offset + chunk.shape[0]][None, :], float("-inf"))
            take = min(k, chunk.shape[0])
            top_scores, top_positions = torch.topk(scores, take, dim=1)
            top_positions = top_positions + offset
            if best_scores is None or best_positions is None:
                best_scores, best_positions = top_scores, top_positions
            else:
                merged_scores = torch.cat([best_scores, top_scores], dim=1)
                merged_positions = torch.cat([best_positions, top_positions], dim=1)
                best_scores, order = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
                best_positions = torch.gather(merged_positions, 1, order)
            offset += chunk.shape[0]
        if best_scores is None or best_positions is None:  # an empty index: nothing to rank
            return torch.empty((len(q), 0)), torch.empty((len(q), 0), dtype=torch.long)
        return best_scores, best_positions


def _auto() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in ("float16", "float32", "bfloat16"):
        raise EmbedkitError(f"unknown dtype '{requested}' (auto, float16, float32, bfloat16)")
    return getattr(torch, requested)

"""Agentic-R in-batch negatives across processes: with two CPU processes (torch.distributed, gloo) of B rows
each (run by torchrun), every query sees every process's passages, so the loss (averaged over processes, as DDP averages
gradients) and the gradients equal one process's on the 2B-row batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ROWS = [  # anchor, positive, two hard negatives
    ("who starred in kiss and tell", "Kiss and Tell is a 1945 film starring Shirley Temple.",
     "Meet Corliss Archer is a radio sitcom.", "A volcano erupts when molten rock rises."),
    ("shirley temple government position", "Shirley Temple was Chief of Protocol of the United States.",
     "Bread is baked from flour and water.", "Kiss and Tell is a 1945 comedy."),
    ("who directed big stone gap", "Big Stone Gap is a 2014 film directed by Adriana Trigiani.",
     "Greenwich Village is a neighbourhood.", "Pianos have 88 keys."),
    ("where is adriana trigiani based", "Adriana Trigiani is an author based in Greenwich Village.",
     "Stone Gap is a town in Virginia.", "Rivers flow to the sea."),
]  # fmt: skip
TEMPERATURE = 0.5  # high enough that every negative weighs in the loss
PROBE = "encoder.layer.0.attention.self.query.weight"  # a parameter whose gradient is compared


def _loss_and_grad(rows, gather: bool):
    """Loss of `rows` under `make_loss` and the probe parameter's gradient (dropout off: deterministic)."""
    from agents.agentic_r import RetrieverTrainConfig, make_loss
    from embedkit.encoding import load_sentence_transformer

    torch.manual_seed(0)
    model = load_sentence_transformer(MINILM, device="cpu")
    model.eval()
    loss_fn = make_loss(model, RetrieverTrainConfig(temperature=TEMPERATURE, gather_across_devices=gather))
    features = [model.tokenize([row[column] for row in rows]) for column in range(4)]
    loss = loss_fn(features, None)
    loss.backward()
    grad = dict(model[0].auto_model.named_parameters())[PROBE].grad.detach().clone()
    return loss.detach(), grad


def _worker(out: str) -> None:
    """One torchrun process: its half of the rows, with and without gathering; rank 0 writes the mean losses
    and the averaged gradients."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR/PORT come from torchrun
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        half = len(ROWS) // world
        result = {}
        for gather in (True, False):
            loss, grad = _loss_and_grad(ROWS[rank * half : (rank + 1) * half], gather)
            # what DDP does with each process's gradient, and the mean of the per-process losses
            dist.all_reduce(grad)
            dist.all_reduce(loss)
            result[str(gather)] = {"loss": loss.item() / world, "grad": (grad / world).flatten().tolist()}
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path: Path) -> dict:
    out = tmp_path / "rank0.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path, one_torch_thread):
    whole_loss, whole_grad = _loss_and_grad(ROWS, gather=True)  # one process: nothing to gather
    result = _two_processes(tmp_path)
    assert result["True"]["loss"] == pytest.approx(whole_loss.item(), abs=1e-5)
    torch.testing.assert_close(torch.tensor(result["True"]["grad"]), whole_grad.flatten(), atol=1e-6, rtol=1e-4)
    # without gathering each process only sees its own passages: fewer negatives, a smaller loss
    assert result["False"]["loss"] < whole_loss.item() - 0.05


if __name__ == "__main__":  # run by torchrun from the test above
    _worker(sys.argv[1])

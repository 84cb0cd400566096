"""The FSDP2 saliency pass's lockstep on two gloo ranks: an error on one rank stops both, and a rank without forget
batches still makes the single-process mask.

The test starts this file as a script on two ranks (``python tests/test_callback_lockstep.py OUT``, with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set). Each rank runs the cases in order and writes
what every fit ended with (its error message, or None) to ``OUT/rank<r>.json``; rank 0 writes the gathered mask of
the fit whose rank 1 has no forget batch to ``OUT/mask.pt``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback

CASES = ("no_forget_batch", "nan_loss", "zero_batch_size")
TIMEOUT = 150  # seconds for both ranks; a hang fails the test instead of blocking it


def make_data(count: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(count, 6, generator=generator), torch.randint(0, 3, (count,), generator=generator))


class Classifier(pl.LightningModule):
    def __init__(self, sharded: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.sharded = sharded

    def configure_model(self) -> None:
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return F.cross_entropy(self.net(inputs), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def nan_on_rank_1(module: Classifier, batch: Any) -> torch.Tensor:
    """Every rank runs the forward (a collective under FSDP2); rank 1's loss is NaN."""
    loss = module.training_step(batch, 0)
    return loss * float("nan") if module.global_rank == 1 else loss


def zero_on_rank_1(batch: Any) -> int:
    """The batch's size, but 0 on rank 1."""
    return 0 if torch.distributed.get_rank() == 1 else len(batch[0])


def fit(callback: WeightSaliencyCallback, forget: TensorDataset, sharded: bool, devices: int) -> None:
    """One step of a new classifier with ``callback``, whose forget data is ``forget`` in batches of 4."""
    strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1) if sharded else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    callback.forget_dataloader = DataLoader(forget, batch_size=4)
    trainer.fit(Classifier(sharded), DataLoader(make_data(8), batch_size=4))


def case(name: str) -> tuple[WeightSaliencyCallback, TensorDataset]:
    """The callback and forget set of a case (forget sets of 9 samples: 2 batches on rank 0, 1 on rank 1)."""
    if name == "no_forget_batch":  # one sample: rank 1 has none, takes the whole set's first (weight 0)
        return WeightSaliencyCallback(ratio=0.5), make_data(1)
    if name == "nan_loss":
        return WeightSaliencyCallback(ratio=0.5, loss_fn=nan_on_rank_1), make_data(9)
    return WeightSaliencyCallback(ratio=0.5, batch_size_fn=zero_on_rank_1), make_data(9)


def main(out: Path) -> None:
    errors: dict[str, Optional[str]] = {}
    for name in CASES:
        callback, forget = case(name)
        try:
            fit(callback, forget, sharded=True, devices=2)
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
        if name == "no_forget_batch":
            mask = callback.full_mask()  # every rank takes part
            if torch.distributed.get_rank() == 0:
                torch.save(mask, out / "mask.pt")
        (out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(errors))  # after each case


# ------------------------------------------------------------------------------------------------ the test
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(out: Path) -> list[dict[str, Optional[str]]]:
    """Start both ranks, wait for them (at most ``TIMEOUT``), kill whatever still runs, and fail unless both ended
    well; returns each rank's outcomes."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    logs = [out / f"rank{r}.log" for r in range(2)]  # files, not pipes: a full pipe would block its rank
    ranks = []
    for r, log in enumerate(logs):
        with log.open("w") as stream:
            ranks.append(subprocess.Popen([sys.executable, __file__, str(out)], stdout=stream, stderr=subprocess.STDOUT,
                                          env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
    deadline = time.monotonic() + TIMEOUT
    while any(rank.poll() is None for rank in ranks) and time.monotonic() < deadline:
        if any(rank.poll() not in (None, 0) for rank in ranks):
            break  # one rank failed: the other may wait for it in a collective
        time.sleep(0.5)
    hung = [r for r, rank in enumerate(ranks) if rank.poll() is None]
    for rank in ranks:
        if rank.poll() is None:
            rank.kill()
        rank.wait()
    shown = "\n".join(f"--- rank {r}:\n{log.read_text()[-2500:]}" for r, log in enumerate(logs))
    assert not hung, f"ranks {hung} still ran after {TIMEOUT} s (a collective mis-paired):\n{shown}"
    for r, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {r} ended with {rank.returncode}:\n{shown}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_an_error_on_one_rank_stops_both_and_a_rank_without_forget_batches_still_makes_the_mask(tmp_path):
    outcomes = run_two_ranks(tmp_path)
    nan = "the saliency loss must be a finite scalar, got nan on forget batch 0 (rank 1); check the forget data and "
    size = "batch_size_fn must return a positive int, got 0 on forget batch 0 (rank 1)."
    for rank, errors in enumerate(outcomes):
        assert errors["no_forget_batch"] is None, rank
        assert errors["nan_loss"] == nan + "loss_fn.", rank  # both ranks name the bad loss
        assert errors["zero_batch_size"] == size, rank
    reference = WeightSaliencyCallback(ratio=0.5)
    fit(reference, make_data(1), sharded=False, devices=1)
    mask = torch.load(tmp_path / "mask.pt", weights_only=True)
    assert list(mask) == list(reference.mask)
    for name, expected in reference.mask.items():
        assert torch.equal(mask[name], expected), name


if __name__ == "__main__":
    main(Path(sys.argv[1]))

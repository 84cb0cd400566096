"""WeightSaliencyCallback under FSDP2 (ModelParallelStrategy + fully_shard), two gloo processes on the CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salun_lightning.callbacks import WeightSaliencyCallback
from tests.fsdp_run import fit

SCRIPT = Path(__file__).with_name("fsdp_run.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    ranks = [subprocess.Popen([sys.executable, str(SCRIPT), str(out)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs):
        assert rank.returncode == 0, output[-3000:]
    return torch.load(out / "result.pt", weights_only=True), out


def test_fsdp_mask_is_the_single_process_mask_and_kept_per_shard(fsdp_result):
    result, out = fsdp_result
    reference = WeightSaliencyCallback(ratio=0.5)
    fit(reference, sharded=False, devices=1)
    assert list(result["computed_mask"]) == list(reference.mask)
    for name, mask in reference.mask.items():
        assert torch.equal(result["computed_mask"][name], mask), name
    total = sum(m.numel() for m in reference.mask.values())
    assert sum(int(m.sum()) for m in result["computed_mask"].values()) == total // 2
    # each rank held only its shard of every mask (dim 0 split in two)
    assert sum(result["local_mask_sizes"].values()) < total
    # the mask file is whole, with its provenance, and loads back into the shards
    assert (out / "mask.safetensors").is_file()
    for name, mask in result["computed_mask"].items():
        assert torch.equal(result["loaded_mask"][name], mask), name


def test_fsdp_training_moves_only_salient_elements(fsdp_result):
    result, _ = fsdp_result
    start = {f"net.{name}": value for name, value in result["start"].items()}
    moved_any = False
    for name, mask in result["computed_mask"].items():
        after = result["after_computed"][name]
        assert torch.equal(after[~mask], start[name][~mask]), name  # bitwise: AdamW with weight decay
        moved_any |= bool((after[mask] != start[name][mask]).any())
        # the same fit with the mask loaded from its file gives the same weights
        assert torch.equal(result["after_loaded"][name], after), name
    assert moved_any

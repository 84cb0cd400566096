"""WeightSaliencyCallback under FSDP2 (ModelParallelStrategy + fully_shard), two gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from salun_lightning.callbacks import WeightSaliencyCallback, load_mask
from tests.fsdp_run import fit
from tests.test_diffusion import pixel_model

SCRIPT = Path(__file__).with_name("fsdp_run.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    original = tmp_path_factory.mktemp("original")
    torch.manual_seed(0)
    pixel_model().save_components(original)  # an untrained 'original' DDPM (every part, as a train run writes)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    logs = [out / f"rank{r}.log" for r in range(2)]  # files, not pipes: a full pipe would block its rank
    ranks = []
    for r, log in enumerate(logs):
        with log.open("w") as stream:
            ranks.append(subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(original)],
                                          env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=stream,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 270
    while any(rank.poll() is None for rank in ranks) and time.monotonic() < deadline:
        if any(rank.poll() not in (None, 0) for rank in ranks):
            break  # one rank failed: the other may wait for it in a collective
        time.sleep(0.5)
    for rank in ranks:
        if rank.poll() is None:
            rank.kill()
        rank.wait()
    for r, (rank, log) in enumerate(zip(ranks, logs)):
        assert rank.returncode == 0, f"rank {r} ended with {rank.returncode}:\n" + "\n".join(
            f"--- rank {i}:\n{text.read_text()[-2500:]}" for i, text in enumerate(logs))
    return torch.load(out / "result.pt", weights_only=True), out, original


def test_fsdp_mask_is_the_single_process_mask_and_kept_per_shard(fsdp_result):
    result, out, _ = fsdp_result
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
    no_steps = load_mask(out / "no_steps.safetensors")[0]  # a fit of no step (`salun mask`) still writes it
    for name, mask in result["computed_mask"].items():
        assert torch.equal(result["loaded_mask"][name], mask), name
        assert torch.equal(no_steps[name], mask), name


def test_fsdp_training_moves_only_salient_elements(fsdp_result):
    result, _, _ = fsdp_result
    start = {f"net.{name}": value for name, value in result["start"].items()}
    moved_any = False
    for name, mask in result["computed_mask"].items():
        after = result["after_computed"][name]
        assert torch.equal(after[~mask], start[name][~mask]), name  # bitwise: AdamW with weight decay
        moved_any |= bool((after[mask] != start[name][mask]).any())
        # the same fit with the mask loaded from its file gives the same weights
        assert torch.equal(result["after_loaded"][name], after), name
    assert moved_any


def test_fsdp_fit_resumed_from_a_sharded_checkpoint_restores_the_mask_and_equals_the_uninterrupted_fit(fsdp_result):
    result, out, _ = fsdp_result
    assert (out / "two_steps.ckpt").is_dir()  # a distributed checkpoint: each rank wrote its shards
    assert result["resumed_source"] == "checkpoint"  # not recomputed (the resumed fit had no forget data)
    assert len(result["resumed_messages"]) == 1, result["resumed_messages"]  # the mask was made once, from there
    assert result["resumed_messages"][0].startswith("WeightSaliency: mask from checkpoint:")
    for name, mask in result["computed_mask"].items():
        assert torch.equal(result["resumed_mask"][name], mask), name
        # 2 steps, a checkpoint, 1 more step: bitwise the 3 steps of one fit (AdamW's moments restored per shard)
        assert torch.equal(result["after_resumed"][name], result["after_computed"][name]), name


def test_salun_command_with_a_sharded_denoiser_saves_the_whole_denoiser_and_moves_only_salient_elements(fsdp_result):
    from diffusers import UNet2DModel

    _, out, original = fsdp_result
    run = out / "diffusion"  # `salun fit` with --trainer.strategy=ModelParallelStrategy on two ranks
    assert not (run / "INCOMPLETE").exists() and json.loads((run / "run.json").read_text())["method"] == "salun"
    assert "ModelParallelStrategy" in (run / "config.yaml").read_text()
    diffusion = torch.load(out / "diffusion.pt", weights_only=True)
    mask = diffusion["mask"]
    start = dict(UNet2DModel.from_pretrained(original / "unet").named_parameters())
    after = dict(UNet2DModel.from_pretrained(out / "diffusion" / "unet").named_parameters())  # loads strictly
    assert set(mask) == {f"unet.{name}" for name in start}
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == total // 2
    assert diffusion["sharded"] and diffusion["local_elements"] < total  # configure_model sharded the denoiser
    moved = 0
    for name, begin in start.items():
        kept = mask[f"unet.{name}"]
        assert torch.equal(after[name].detach()[~kept], begin.detach()[~kept]), name
        moved += int((after[name].detach()[kept] != begin.detach()[kept]).sum())
    assert moved > 0
    assert (out / "diffusion" / "mask.safetensors").is_file()  # the run keeps its mask, whole
    config = json.loads((out / "diffusion" / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel"  # not the class fully_shard made


def test_fsdp_fit_without_forget_data_stops_every_rank_before_any_step(fsdp_result):
    _, out, _ = fsdp_result
    outcome = torch.load(out / "no_forget.pt", weights_only=True)
    assert outcome["error"].startswith("WeightSaliencyCallback needs forget data: pass WeightSaliencyCallback(")
    assert outcome["unchanged"]


class FakeMesh:
    """Stands in for a device mesh of ModelParallelStrategy: dimension names and sizes only."""

    def __init__(self, data_parallel: int, tensor_parallel: int) -> None:
        self.sizes = {"data_parallel": data_parallel, "tensor_parallel": tensor_parallel}
        self.mesh_dim_names = tuple(self.sizes)

    def __getitem__(self, name: str):
        return type("Dim", (), {"size": lambda _, n=self.sizes[name]: n})()


@pytest.mark.parametrize(("kwargs", "tensor_parallel", "message"), [
    ({}, 2, r"FSDP2 only: use ModelParallelStrategy\(data_parallel_size=N, tensor_parallel_size=1\)"),
    ({"ema_decay": 0.999}, 1, "ema_decay is not supported with a sharded denoiser"),
])
def test_configure_model_refuses_what_it_cannot_shard(kwargs, tensor_parallel, message):
    model = pixel_model(**kwargs)
    model._device_mesh = FakeMesh(2, tensor_parallel)
    with pytest.raises(ValueError, match=message):
        model.configure_model()
    assert not model._sharded

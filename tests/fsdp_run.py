"""One rank of a two-process FSDP2 unlearning run on the CPU (gloo), started by ``tests/test_fsdp.py``.

Rank r of ``WORLD_SIZE`` (environment, as torchrun sets it): fit a small classifier sharded with FSDP2's
``fully_shard`` under ``ModelParallelStrategy`` with ``WeightSaliencyCallback`` (mask from the forget set, saved to
``<out>/mask.safetensors``), then fit a fresh copy with that mask loaded back (``mask_path``), then fit two steps,
save a (distributed) checkpoint and resume from it for the third. Rank 0 writes the starting weights, the weights
after each fit and the callback's gathered masks to ``<out>/result.pt``. Then ``salun fit`` for the class-conditional
DDPM of the diffusers directory ORIGINAL with ``--trainer.strategy=ModelParallelStrategy``, its denoiser sharded by
the module's ``configure_model``: the run directory ``<out>/diffusion`` gets the whole denoiser, and rank 0 writes
the gathered mask to ``<out>/diffusion.pt``. Last, a fit without forget data: rank 0 writes its error to
``<out>/no_forget.pt``.

    python tests/fsdp_run.py OUT ORIGINAL   # with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.lightning_cli import SalunCLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 10), torch.nn.ReLU(),
                               torch.nn.Linear(10, 3))


def data() -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(1)
    # 9 forget samples in batches of 4: rank 0 gets 2 batches and rank 1 one (the ranks must still go in lockstep)
    forget = TensorDataset(torch.randn(9, 6, generator=generator), torch.randint(0, 3, (9,), generator=generator))
    retain = TensorDataset(torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    return forget, retain


class Classifier(pl.LightningModule):
    def __init__(self, sharded: bool) -> None:
        super().__init__()
        self.net, self.sharded = make_net(), sharded

    def configure_model(self) -> None:
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(self.net(inputs), labels)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.1)


def fit(callback: WeightSaliencyCallback, sharded: bool, devices: int, steps: int = 3,
        ckpt_path: Optional[Path] = None, save_to: Optional[Path] = None, with_forget: bool = True,
        model: Optional[Classifier] = None) -> Classifier:
    """``steps`` optimizer steps of ``model`` (default: a new one), resumed from ``ckpt_path`` when given; ``save_to``:
    a checkpoint at the end; without ``with_forget`` the callback has no forget data."""
    forget, retain = data()
    model = model or Classifier(sharded)
    strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1) if sharded else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=steps, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    callback.forget_dataloader = DataLoader(forget, batch_size=4) if with_forget else None
    trainer.fit(model, DataLoader(retain, batch_size=8, shuffle=False), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)  # every rank: the callback gathers the whole mask into the checkpoint
    return model


@contextlib.contextmanager
def logged_messages() -> Iterator[list[str]]:
    """The messages Lightning's rank-zero helpers log meanwhile (``rank_zero_info``; rank 0 only)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def full_weights(model: Classifier) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}


def unlearn_diffusion(original: Path, root: Path) -> dict:
    """salun for a pixel DDPM through the ``salun`` command line, its denoiser sharded under ModelParallelStrategy:
    the callback's whole mask, and this rank's share of it."""
    cli = SalunCLI(args=[
        "fit", "--config", str(CONFIGS / "ddpm_digits_salun.yaml"), f"--trainer.default_root_dir={root}",
        f"--model.init_args.pretrained={original}", "--data.init_args.image_size=8", "--data.init_args.batch_size=8",
        "--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
        "--trainer.devices=2", "--trainer.strategy=ModelParallelStrategy", "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1", "--model.init_args.lr=0.01"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, WeightSaliencyCallback))
    return {"mask": callback.full_mask(), "local_elements": sum(m.numel() for m in callback.mask.values()),
            "sharded": cli.model._sharded}


def main(out: Path, original: Path) -> None:
    computed = WeightSaliencyCallback(ratio=0.5, save_mask_path=str(out / "mask.safetensors"))
    first = fit(computed, sharded=True, devices=2)
    computed_mask, after_computed = computed.full_mask(), full_weights(first)
    loaded = WeightSaliencyCallback(ratio=0.5, mask_path=str(out / "mask.safetensors"))
    second = fit(loaded, sharded=True, devices=2)
    loaded_mask, after_loaded = loaded.full_mask(), full_weights(second)
    # interrupted after 2 of the 3 steps, then resumed from the sharded checkpoint without forget data: the mask, the
    # weights and the optimizer state come from the checkpoint, and the mask is made once
    fit(WeightSaliencyCallback(ratio=0.5), sharded=True, devices=2, steps=2, save_to=out / "two_steps.ckpt")
    resumed = WeightSaliencyCallback(ratio=0.5)
    with logged_messages() as messages:
        third = fit(resumed, sharded=True, devices=2, ckpt_path=out / "two_steps.ckpt", with_forget=False)
    resumed_mask, after_resumed = resumed.full_mask(), full_weights(third)
    # no training step (as `salun mask` runs): the mask is still made and written
    fit(WeightSaliencyCallback(ratio=0.5, save_mask_path=str(out / "no_steps.safetensors")), sharded=True, devices=2,
        steps=0)
    if torch.distributed.get_rank() == 0:
        start = {name: p.detach().clone() for name, p in make_net().named_parameters()}
        torch.save({"start": start, "computed_mask": computed_mask, "after_computed": after_computed,
                    "loaded_mask": loaded_mask, "after_loaded": after_loaded, "resumed_mask": resumed_mask,
                    "after_resumed": after_resumed, "resumed_source": resumed.saliency_stats["source"],
                    "resumed_messages": [m for m in messages if m.startswith("WeightSaliency")],
                    "local_mask_sizes": {n: m.numel() for n, m in computed.mask.items()}}, out / "result.pt")
    diffusion = unlearn_diffusion(original, out / "diffusion")
    if torch.distributed.get_rank() == 0:
        torch.save(diffusion, out / "diffusion.pt")
    # no forget data, no mask file, no checkpoint: every rank stops with the error before any step, none hangs
    model = Classifier(sharded=True)
    try:
        fit(WeightSaliencyCallback(ratio=0.5), sharded=True, devices=2, with_forget=False, model=model)
        error = "no error"
    except MisconfigurationException as raised:
        error = str(raised)
    unchanged = all(torch.equal(weight, start)
                    for weight, start in zip(full_weights(model).values(), full_weights(Classifier(False)).values()))
    if torch.distributed.get_rank() == 0:
        torch.save({"error": error, "unchanged": unchanged}, out / "no_forget.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

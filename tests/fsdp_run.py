"""One rank of a two-process FSDP2 unlearning run on the CPU (gloo), started by ``tests/test_fsdp.py``.

Rank r of ``WORLD_SIZE`` (environment, as torchrun sets it): fit a small classifier sharded with FSDP2's
``fully_shard`` under ``ModelParallelStrategy`` with ``WeightSaliencyCallback`` (mask from the forget set, saved to
``<out>/mask.safetensors``), then fit a fresh copy with that mask loaded back (``mask_path``). Rank 0 writes the
starting weights, the weights after each fit and the callback's gathered masks to ``<out>/result.pt``. Then salun
for the class-conditional DDPM of the diffusers directory ORIGINAL, its denoiser sharded by the module's
``configure_model``: the run directory ``<out>/diffusion`` gets the whole denoiser, and rank 0 writes the gathered
mask to ``<out>/diffusion.pt``.

    python tests/fsdp_run.py OUT ORIGINAL   # with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback


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


def fit(callback: WeightSaliencyCallback, sharded: bool, devices: int) -> Classifier:
    forget, retain = data()
    model = Classifier(sharded)
    strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1) if sharded else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    callback.forget_dataloader = DataLoader(forget, batch_size=4)
    trainer.fit(model, DataLoader(retain, batch_size=8, shuffle=False))
    return model


def full_weights(model: Classifier) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}


def unlearn_diffusion(original: Path, root: Path) -> dict:
    """salun for the pixel DDPM with a sharded denoiser: the callback's whole mask, and this rank's share of it."""
    from tests.test_diffusion import data, fit as fit_diffusion, pixel_model

    torch.manual_seed(0)
    model = pixel_model("salun", pretrained=str(original), lr=1e-2)
    trainer = fit_diffusion(model, data(), root, steps=2, devices=2,
                            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    callback = next(c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback))
    return {"mask": callback.full_mask(), "local_elements": sum(m.numel() for m in callback.mask.values()),
            "sharded": model._sharded}


def main(out: Path, original: Path) -> None:
    computed = WeightSaliencyCallback(ratio=0.5, save_mask_path=str(out / "mask.safetensors"))
    first = fit(computed, sharded=True, devices=2)
    computed_mask, after_computed = computed.full_mask(), full_weights(first)
    loaded = WeightSaliencyCallback(ratio=0.5, mask_path=str(out / "mask.safetensors"))
    second = fit(loaded, sharded=True, devices=2)
    loaded_mask, after_loaded = loaded.full_mask(), full_weights(second)
    if torch.distributed.get_rank() == 0:
        start = {name: p.detach().clone() for name, p in make_net().named_parameters()}
        torch.save({"start": start, "computed_mask": computed_mask, "after_computed": after_computed,
                    "loaded_mask": loaded_mask, "after_loaded": after_loaded,
                    "local_mask_sizes": {n: m.numel() for n, m in computed.mask.items()}}, out / "result.pt")
    diffusion = unlearn_diffusion(original, out / "diffusion")
    if torch.distributed.get_rank() == 0:
        torch.save(diffusion, out / "diffusion.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The WeightSaliencyCallback in a plain LightningModule that knows nothing about unlearning.

Trains a small classifier on scikit-learn's digits, then unlearns digit 0 SalUn-style: random labels on the
forget set plus ordinary training on the rest, updating only the salient half of the weights.

    python examples/weight_saliency_digits.py
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback


class DigitsClassifier(LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data.tensors
        result = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return result


def main() -> None:
    seed_everything(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    forget, retain = TensorDataset(x[y == 0], y[y == 0]), TensorDataset(x[y != 0], y[y != 0])

    model = DigitsClassifier()
    trainer = Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    print(f"original model: forget accuracy {accuracy(model, forget):.1f}%, retain {accuracy(model, retain):.1f}%")

    # Random labels for the forget set (never the true one), mixed with the retain set.
    random_labels = (forget.tensors[1] + torch.randint(1, 10, forget.tensors[1].shape)) % 10
    relabelled = TensorDataset(torch.cat([forget.tensors[0], retain.tensors[0]]), torch.cat([random_labels, retain.tensors[1]]))
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    saliency = WeightSaliencyCallback(ratio=0.5, forget_dataloader=DataLoader(forget, batch_size=64))
    unlearn = Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[saliency])
    unlearn.fit(model, DataLoader(relabelled, batch_size=64, shuffle=True))

    frozen_intact = all(torch.equal(p.detach()[~saliency.mask[n]], start[n][~saliency.mask[n]]) for n, p in model.named_parameters())
    print(f"salun: trained {saliency.saliency_stats['kept_fraction']:.0%} of the weights; the other "
          f"{1 - saliency.saliency_stats['kept_fraction']:.0%} are {'unchanged' if frozen_intact else 'CHANGED'}")
    print(f"unlearned model: forget accuracy {accuracy(model, forget):.1f}%, retain {accuracy(model, retain):.1f}%")


if __name__ == "__main__":
    main()

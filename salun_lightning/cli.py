"""The ``salun`` command: LightningCLI over any LightningModule and LightningDataModule.

Example::

    salun fit --config configs/my_experiment.yaml
    salun fit --model my_project.Model --data my_project.Data \\
        --trainer.callbacks+=salun_lightning.callbacks.WeightSaliencyCallback
"""

from __future__ import annotations

from typing import Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI


def main(args: ArgsType = None) -> Optional[LightningCLI]:
    """Run the command line (``args`` defaults to ``sys.argv``)."""
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()

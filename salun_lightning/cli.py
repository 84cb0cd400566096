"""The ``salun`` command: LightningCLI for every experiment, plus ``mask``, ``report`` and ``sample``.

Example::

    salun fit --config configs/digits/train.yaml                      # the original model (then tested)
    salun fit --config configs/digits/salun.yaml --config configs/digits/forget/random10.yaml
    salun test --config configs/digits/salun.yaml --ckpt_path runs/digits/salun/checkpoints/last.ckpt
    salun mask --config configs/digits/salun.yaml --ratio 0.5 --out runs/digits/mask.safetensors
    salun report runs/digits/* --out runs/digits
    salun sample --config configs/diffusion/ddpm_digits_salun.yaml --out runs/ddpm_digits/salun/samples
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from salun_lightning import report
from salun_lightning.callbacks import WeightSaliencyCallback


class SalunCLI(LightningCLI):
    """LightningCLI over any LightningModule and LightningDataModule; ``fit`` tests the model afterwards.

    A second run into the same directory overwrites the saved ``config.yaml`` instead of failing.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="run the test stage after fit (writes metrics.json)"
        )

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and self.trainer.state.status == "finished":
            self.trainer.test(self.model, datamodule=self.datamodule)


def mask_main(argv: Sequence[str]) -> None:
    """``salun mask``: compute the saliency mask of a model on a forget set and write it, without training."""
    parser = argparse.ArgumentParser(
        prog="salun mask",
        description="Compute the weight saliency mask for the model and forget set of a config and write it "
        "(safetensors); give it back to unlearning runs as --model.init_args.mask_path. Other arguments are those "
        "of 'salun fit'.",
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of weights to keep (default 0.5)")
    parser.add_argument("--out", required=True, help="where to write the mask (.safetensors)")
    args, rest = parser.parse_known_args(argv)
    callback = WeightSaliencyCallback(ratio=args.ratio, save_mask_path=args.out)  # checks the ratio first
    cli = SalunCLI(args=list(rest), run=False)
    cli.model.configure_callbacks = lambda: [callback]  # this callback only, whatever the method's own
    cli.trainer.fit_loop.epoch_loop.max_steps = 0  # on_fit_start computes and writes the mask; no step is taken
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"wrote {args.out}: {callback.saliency_stats['kept']:,} of {callback.saliency_stats['total']:,} weights")


def main(args: Optional[Sequence[str]] = None) -> None:
    """Run the command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "report":
        report.main(argv[1:])
    elif argv and argv[0] == "mask":
        mask_main(argv[1:])
    elif argv and argv[0] == "sample":
        from salun_lightning.diffusion.sampling import sample_main  # diffusers is imported only when sampling

        sample_main(argv[1:])
    else:
        SalunCLI(args=argv)


if __name__ == "__main__":
    main()

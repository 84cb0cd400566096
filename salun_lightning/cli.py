"""The ``salun`` command: LightningCLI for every experiment, plus ``mask``, ``report``, ``sample``, ``generate`` and
``nudity``.

All commands live here. ``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's: the data module's class
count, image shape, class names and forgotten class are linked into the model's constructor, and the model's
method chooses the data module's training stream, so a run's saved ``config.yaml`` shows all of it. ``fit`` tests
the model it produced afterwards; ``test`` tests a saved model (``<run>/model.safetensors`` by default, or
``--ckpt_path``: a ``model.safetensors`` or a Lightning checkpoint) and writes ``metrics.json`` into that model's
run directory. ``generate`` makes image sets with a text-to-image model itself (concept erasure's forget and
retain sets, I2P evaluation images); ``nudity`` counts NudeNet's exposed-part detections in a folder of them (the
``nudity`` extra). A user error prints one short message; ``--debug`` (or ``SALUN_DEBUG=1``) shows
the traceback.

Example (shell; ``tests/test_readme.py`` runs these lines as written, at tiny size)::

    salun fit --config configs/digits/train.yaml                      # the original model -> runs/digits/train
    salun mask --config configs/digits/salun.yaml --out runs/digits/mask.safetensors
    salun fit --config configs/digits/salun.yaml --model.init_args.mask_path runs/digits/mask.safetensors
    salun fit --config configs/digits/retrain.yaml                    # exact unlearning, the reference
    salun test --config runs/digits/salun/config.yaml                 # tests runs/digits/salun/model.safetensors
    salun report runs/digits/* --out runs/digits                      # skips the mask file
    salun fit --config configs/diffusion/ddpm_digits_train.yaml
    salun sample --config configs/diffusion/ddpm_digits_train.yaml --out runs/ddpm_digits/train/samples
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from typing_extensions import override
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from salun_lightning import report
from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.files import write_atomically
from salun_lightning.runs import CONFIG_FILENAME, MODEL_FILENAME, check_writable, read_forget_set, run_directory_of

# What the model needs to know about the data: (data attribute, model argument, conversion). A link whose model
# argument the chosen model class lacks is skipped.
DATA_TO_MODEL: tuple[tuple[str, str, Optional[Callable[[Any], Any]]], ...] = (
    ("num_classes", "num_classes", None),
    ("image_shape", "in_channels", lambda shape: shape[0]),
    ("image_shape", "image_shape", tuple),
    ("class_names", "class_names", None),
    ("class_prompts", "class_prompts", None),
    ("forget_class_index", "forget_class", None),
)
CONFIG_HEADER = (
    "The whole run, as `salun fit` ran it: the values linked from the data into the model (num_classes, in_channels, "
    "...) and the training stream chosen by the method are filled in. Rerun or test with --config <this file>."
)
# ModuleNotFoundError: an optional extra that is not installed (the message names it)
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ModuleNotFoundError, MisconfigurationException)
# Printed by Lightning on every command, about nothing the user did: deprecations inside Lightning, the empty
# validation list that means "no validation" (val_size 0), and an advertisement.
NOISE_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"Total length of `\w+` across ranks is zero")
NOISE_LOGS = ("💡 Tip:",)
COMMANDS = {
    "fit": "train or unlearn (the config's method), save the model, then test it",
    "validate": "run the validation stage",
    "test": "test a saved model (default <run>/model.safetensors) and write metrics.json beside it",
    "predict": "run the predict stage",
    "mask": "compute the weight saliency mask of a config's model and forget set, without training",
    "report": "compare runs against retraining (markdown table and chart)",
    "sample": "generate images with a diffusion run's denoiser",
    "generate": "make image sets (forget/retain, I2P prompts) with a text-to-image model, as an image folder",
    "nudity": "count NudeNet detections of exposed body parts in a folder of generated images (nudity extra)",
}


def stream_of_method(class_path: Optional[str], method: Optional[str]) -> Optional[str]:
    """The training stream of ``method`` in the model class's ``methods`` table (``None`` for other models, or an
    unknown method, which the model's constructor then refuses)."""
    if not class_path or method is None:
        return None
    module_name, _, name = class_path.rpartition(".")
    methods = getattr(getattr(importlib.import_module(module_name), name, None), "methods", None)
    spec = methods.get(method) if isinstance(methods, dict) else None
    return getattr(spec, "stream", None)


class RunConfigCallback(SaveConfigCallback):
    """Save the fit's whole configuration as ``<run directory>/config.yaml`` (not the logger's folder), with the
    values linked from the data into the model (class count, image shape, ...) filled in, as the model got them."""

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        directory = Path(trainer.default_root_dir)  # the run's, once the data module's setup has opened it
        check_writable(directory, CONFIG_FILENAME)
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        model_args = config.get("model", {}).setdefault("init_args", {})
        accepted = inspect.signature(type(pl_module)).parameters
        for target in dict.fromkeys(target for _, target, _ in DATA_TO_MODEL):  # as the model got them, or none
            model_args.pop(target, None)
            if target in accepted and target in pl_module.hparams:
                model_args[target] = _plain(pl_module.hparams[target])
        data_args = config.get("data", {}).setdefault("init_args", {})
        if trainer.datamodule is not None and "stream" in trainer.datamodule.hparams:
            data_args["stream"] = trainer.datamodule.hparams["stream"]
        text = f"# {CONFIG_HEADER}\n" + yaml.safe_dump(config, sort_keys=False)
        write_atomically(directory / CONFIG_FILENAME, lambda stream: stream.write(text.encode()))


def _plain(value: Any) -> Any:
    """A hyper-parameter as YAML writes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


class SalunCLI(LightningCLI):
    """LightningCLI over any LightningModule and LightningDataModule, with the data linked into the model.

    ``fit`` tests the model afterwards (``--test_after_fit``) and saves ``config.yaml`` into its run directory (a
    second fit into the same directory overwrites it); no other command writes a config. ``--trainer.enable_checkpointing
    true`` keeps ``<run>/checkpoints/last.ckpt``.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="run the test stage after fit (writes metrics.json)"
        )
        parser.link_arguments(
            ("model.class_path", "model.init_args.method"),
            "data.init_args.stream",
            compute_fn=stream_of_method,
            apply_on="parse",
        )
        for source, target, convert in DATA_TO_MODEL:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", compute_fn=convert, apply_on="instantiate")

    def parse_arguments(self, parser, args: ArgsType) -> None:
        # LightningCLI warns whenever ``args`` and ``sys.argv`` are both given; this command always passes ``args``.
        self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        if self.subcommand != "fit":  # only a fit owns its run directory
            self.save_config_callback = None

    def before_fit(self) -> None:
        for callback in self.trainer.checkpoint_callbacks:
            if callback.save_last is None:
                callback.save_last = True

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and self.trainer.state.status == "finished":
            self.trainer.test(self.model, datamodule=self.datamodule)

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given: LightningCLI would overwrite the model's arguments with a checkpoint's, which
        hides what the run does; `test` instead refuses a checkpoint of another method."""

    def test(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None,
             ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        """Test a saved model: ``ckpt_path`` (safetensors or checkpoint), else ``<default_root_dir>/model.safetensors``."""
        ckpt_path = self._load_saved_model(model, datamodule, ckpt_path, "test")
        self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None,
                 ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        """Validate a saved model, as :meth:`test` finds it (a fit's model, not the weights it started from)."""
        ckpt_path = self._load_saved_model(model, datamodule, ckpt_path, "validate")
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _load_saved_model(self, model: LightningModule, datamodule: Optional[LightningDataModule],
                          ckpt_path: Optional[str], command: str) -> Optional[str]:
        """Load ``ckpt_path`` (a ``model.safetensors``) or ``<default_root_dir>/model.safetensors`` into ``model``;
        return the checkpoint for Lightning to restore instead, if that is what was given."""
        path = Path(ckpt_path) if ckpt_path else Path(self.trainer.default_root_dir) / MODEL_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no saved model to {command}: {path} does not exist. Fit first, or give --ckpt_path <run>/"
                f"{MODEL_FILENAME} (or a Lightning checkpoint)."
            )
        check_same_forget_set(run_directory_of(path), datamodule)
        if path.suffix != ".safetensors":  # a checkpoint's method is checked by the module as it loads
            return str(path)
        if not callable(getattr(model, "load_model", None)):
            raise ValueError(f"{type(model).__name__} cannot load {path.name}; give a Lightning checkpoint.")
        model.load_model(str(path))
        return None


def check_same_forget_set(run_dir: Path, datamodule: Any) -> None:
    """Refuse to test the model of ``run_dir`` on another forget set than the one it was made for.

    Raises:
        ValueError: both forget sets are known and differ (the message names both).
    """
    record = read_forget_set(run_dir)
    if record is None or not hasattr(datamodule, "forget_set_id"):
        return
    current = datamodule.forget_set_id
    if current != record["id"]:
        raise ValueError(
            f"the model in {run_dir} was made for the forget set {record.get('description')!r} "
            f"({record['id'][:19]}, seed {record.get('seed')}), but this config's data draw "
            f"{getattr(datamodule, 'forget_set_description', '?')!r} ({current[:19]}): its UA and RA would be measured "
            f"on the wrong samples. Test it with its own config: salun test --config {run_dir / 'config.yaml'}"
        )


def mask_main(argv: Sequence[str]) -> None:
    """``salun mask``: compute the saliency mask of a config's model on its forget set and write it, without training.

    The ratio, parameter filter and batch-size function are those of the model's own saliency callback
    (``configure_callbacks``), so the mask is the one ``salun fit`` with that config would compute.
    """
    parser = argparse.ArgumentParser(
        prog="salun mask",
        description="Compute the weight saliency mask for the model and forget set of a config and write it "
        "(safetensors, with its provenance); give it back to unlearning runs as --model.init_args.mask_path. The "
        "ratio is the model's (--model.init_args.saliency_ratio). Other arguments are those of 'salun fit'.",
    )
    parser.add_argument("--out", required=True, help="where to write the mask (.safetensors)")
    args, rest = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="salun-mask-") as scratch:  # never touches the config's run directory
        cli = SalunCLI(args=[*rest, f"--trainer.default_root_dir={scratch}"], run=False)
        callbacks = [c for c in cli.model.configure_callbacks() if isinstance(c, WeightSaliencyCallback)]
        if not callbacks:
            raise ValueError(
                f"the config's model ({type(cli.model).__name__}, method {cli.model.hparams.get('method')!r}) has no "
                "weight saliency callback; use a salun config."
            )
        callback = callbacks[0]
        callback.mask_path, callback.save_mask_path = None, args.out
        cli.model.configure_callbacks = lambda: [callback]  # this callback only, whatever the method's own
        cli.trainer.fit_loop.epoch_loop.max_steps = 0  # no step: the callback makes and writes the mask (fit start or end)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    stats = callback.saliency_stats
    print(f"wrote {args.out}: {stats['kept']:,} of {stats['total']:,} weights (ratio {callback.ratio})")


def report_main(argv: Sequence[str]) -> None:
    """``salun report``: print the report table, and write the files when ``--out`` is given.

    Each skipped entry gets one line on stderr (``skipped <path>: <reason>``), and with
    ``--allow-mixed-forget-sets`` each way the forget sets differ one ``warning:`` line. Errors are raised as in
    :func:`~salun_lightning.report.build_report`.

    Example::

        >>> import tempfile
        >>> from salun_lightning.files import write_json
        >>> runs = Path(tempfile.mkdtemp())
        >>> write_json(runs / "retrain" / "metrics.json", {"method": "retrain", "seed": 0, "UA": 5.24, "RA": 100.0,
        ...                                              "TA": 94.26, "MIA": 12.88, "RTE": 43.29})
        >>> write_json(runs / "ga" / "metrics.json", {"method": "ga", "seed": 0, "UA": 9.24, "RA": 96.0,
        ...                                         "TA": 92.26, "MIA": 8.88, "RTE": None})
        >>> (runs / "mask.safetensors").touch()  # not a run: skipped, with a line on stderr
        >>> report_main([*map(str, sorted(runs.iterdir())), "--out", str(runs)])  # salun report <runs>/* --out <runs>
        | method | forget set | UA | RA | TA | MIA | Avg. Gap | RTE |
        | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
        | retrain | unknown | 5.24 | 100.00 | 94.26 | 12.88 | 0.00 | 43.29 |
        | ga | unknown | 9.24 | 96.00 | 92.26 | 8.88 | 3.50 | n/a |
        >>> sorted(path.name for path in runs.glob("report.*"))
        ['report.md', 'report.png']
    """
    parser = argparse.ArgumentParser(prog="salun report", description="Markdown report of unlearning runs.")
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        help="run directories, each with a metrics.json (e.g. runs/digits/*); entries that are not finished run "
        "directories (files, folders without metrics.json, folders marked INCOMPLETE) are skipped and listed",
    )
    parser.add_argument("--out", type=Path, default=None, help="write report.md and report.png here")
    parser.add_argument("--retrain", default="retrain", help="method name of the reference runs")
    parser.add_argument(
        "--allow-mixed-forget-sets",
        action="store_true",
        help="compare runs of different forget sets (scenarios, or forget-set ids within a seed) on purpose; "
        "the report carries a warning",
    )
    args = parser.parse_args(argv)
    result = report.make_report(args.run_dirs, args.out, args.retrain, args.allow_mixed_forget_sets)
    for entry in result.skipped:
        print(f"skipped {entry.path}: {entry.reason}", file=sys.stderr)
    for problem in result.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    print(result.table, end="")


def sample_main(argv: Sequence[str]) -> None:
    """``salun sample``: build the model of a config, load the trained denoiser, write samples."""
    import torch

    from salun_lightning.data.splits import resolve_class
    from salun_lightning.diffusion import DiffusionUnlearningModule, TextToImageDiffusion
    from salun_lightning.diffusion.sampling import SAMPLES_FILENAME, sample_images, write_samples

    parser = argparse.ArgumentParser(
        prog="salun sample",
        description="Generate images with the diffusion model of a config (the denoiser its fit saved): "
        "<out>/<k>_<class>/<i>.png per class or prompt, grid.png (one row each) and samples.json. Other arguments "
        "are those of 'salun fit'.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_per_class", type=int, default=8, help="images per class or prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="w in (1+w)eps(c) - w eps(null) (default: 2.0 class, 6.5 text)"
    )
    parser.add_argument("--classes", nargs="+", default=None, help="class names or indices (default: all)")
    parser.add_argument("--prompts", nargs="+", default=None, help="text models: prompts instead of classes")
    parser.add_argument("--unet", default=None, help="denoiser directory (default: <trainer.default_root_dir>/unet)")
    parser.add_argument("--batch_size", type=int, default=64, help="images denoised together (default 64)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu or cuda:0 (default: auto)")
    args, rest = parser.parse_known_args(argv)
    if args.num_per_class < 1 or args.steps < 1:
        parser.error("--num_per_class and --steps must be positive")
    cli = SalunCLI(args=rest, run=False)
    module = cli.model
    if not isinstance(module, DiffusionUnlearningModule):
        parser.error(f"the config's model is a {type(module).__name__}, not a diffusion model")
    unet = args.unet or str(Path(cli.trainer.default_root_dir) / "unet")
    module.load_unet(unet)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(torch.device(device))
    if args.prompts:
        if not isinstance(module, TextToImageDiffusion):
            parser.error("--prompts needs a text-to-image model")
        names = list(args.prompts)
        conditions: Any = [prompt for prompt in names for _ in range(args.num_per_class)]
        indices = None
    else:
        indices = [resolve_class(c, module.class_names) for c in (args.classes or range(module.num_classes))]
        names = [module.class_names[i] for i in indices]
        classes = torch.tensor(indices).repeat_interleave(args.num_per_class)
        conditions = module.class_condition(classes)
    guidance = module.default_guidance if args.guidance is None else args.guidance
    images = sample_images(module, conditions, args.seed, args.steps, guidance, args.batch_size)
    out = Path(args.out)
    files = write_samples(images, names, args.num_per_class, out)
    summary = {
        "unet": unet,
        "method": module.hparams.method,
        "forget_class": module.forget_class_index,
        "class_indices": indices,
        "names": names,
        "num_per_class": args.num_per_class,
        "seed": args.seed,
        "steps": args.steps,
        "guidance": guidance,
        "files": files,
    }
    (out / SAMPLES_FILENAME).write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(images)} images to {out} (grid.png, {SAMPLES_FILENAME})")


def generate_main(argv: Sequence[str]) -> None:
    """``salun generate``: make the images of classes (``--set``) or of a prompt list (``--prompts-csv``) with a
    text-to-image model, as an image folder with ``prompts.csv`` (see :mod:`salun_lightning.diffusion.generate`)."""
    parser = argparse.ArgumentParser(
        prog="salun generate",
        description="Make image sets with a text-to-image model itself: <out>/train/<class>/<NNNNN>.png, "
        "<out>/prompts.csv (file, prompt, seed, guidance) and <out>/generation.json, an image folder that "
        "DiffusionDataModule reads (dataset: image_folder, data_path: <out>, prompts_csv: <out>/prompts.csv, "
        "forget_class: <class>). Each image's noise comes from its own seed (the CSV's), so the images do not depend "
        "on the batch size; a rerun of the same command makes only the images missing (an interrupted run leaves "
        "an INCOMPLETE file and no prompts.csv). Example, the paper's nudity sets: salun generate --pretrained "
        "/models/stable-diffusion-v1-4 --out data/nudity --set forget 'a photo of a nude person' 800 --set retain "
        "'a photo of a person wearing clothes' 800",
    )
    parser.add_argument("--pretrained", required=True, metavar="DIR_OR_HUB_ID",
                        help="the text-to-image model: a diffusers pipeline directory (unet/ vae/ text_encoder/ "
                        "tokenizer/ scheduler/: a Stable Diffusion checkout, or a TextToImageDiffusion train run) or a "
                        "Hugging Face Hub id (needs the network)")
    parser.add_argument("--unet", default=None, metavar="DIR",
                        help="denoiser to use instead of <pretrained>/unet, e.g. an unlearning run's <run>/unet")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: new, empty, or an earlier generation to complete")
    what = parser.add_argument_group("what to make: --set (repeated) or --prompts-csv")
    what.add_argument("--set", dest="sets", nargs=3, action="append", metavar=("CLASS", "PROMPT", "COUNT"),
                      help="COUNT images of PROMPT into train/CLASS/ (CLASS: a folder name, e.g. forget); repeat per "
                      "class, or per prompt of a class of several prompts (its images are numbered on)")
    what.add_argument("--test-count", type=int, default=None, metavar="K",
                      help="with --set: images per --set also made into test/CLASS/ with their own seeds (default 1: "
                      "image folders need a test/ split to be read; listed in test_prompts.csv)")
    what.add_argument("--prompts-csv", default=None, metavar="FILE",
                      help="a prompt list, one image per row with that row's seed and guidance (I2P's columns by "
                      "default), into train/<--class-name>/")
    what.add_argument("--class-name", default=None, metavar="NAME",
                      help="with --prompts-csv: the class folder (default prompts)")
    what.add_argument("--prompt-column", default=None, metavar="NAME",
                      help="with --prompts-csv: the prompt column (default prompt)")
    what.add_argument("--seed-column", default=None, metavar="NAME",
                      help="with --prompts-csv: the seed column (default evaluation_seed; '' for seeds from --seed)")
    what.add_argument("--guidance-column", default=None, metavar="NAME",
                      help="with --prompts-csv: the guidance-scale column (default evaluation_guidance; '' for "
                      "--guidance on every row)")
    what.add_argument("--per-prompt", type=int, default=None, metavar="K",
                      help="with --prompts-csv: images per row (default 1), seeds <row's seed> + 0, 1, ...")
    how = parser.add_argument_group("how")
    how.add_argument("--seed", type=int, default=0,
                     help="the seed every image's seed derives from (default 0); prompt lists use their seed column")
    how.add_argument("--guidance", type=float, default=7.5, metavar="G",
                     help="diffusers' guidance_scale g (default 7.5, Stable Diffusion's): eps(null) + g (eps(c) - "
                     "eps(null)); 1 is no guidance. Note: salun sample's --guidance is w = g - 1")
    how.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    how.add_argument("--image-size", type=int, default=None, metavar="N",
                     help="image side (default: the model's, 512 for Stable Diffusion 1.x)")
    how.add_argument("--batch-size", type=int, default=8, metavar="N",
                     help="images denoised together (default 8; does not change the images)")
    how.add_argument("--precision", choices=["32", "bf16", "16"], default="32",
                     help="32 (default), or bf16/16 autocast: faster on GPUs, images differ slightly")
    how.add_argument("--device", default="auto", help="torch device, e.g. cpu or cuda:0 (default: auto)")
    how.add_argument("--overwrite", action="store_true",
                     help="replace a generation of other settings in --out (default: refuse, naming what differs)")
    args = parser.parse_args(argv)

    from salun_lightning.diffusion.generate import I2P_COLUMNS, PROMPTS_FILENAME, generate, plan_prompts_csv, plan_sets

    csv_options = {"--class-name": args.class_name, "--prompt-column": args.prompt_column,
                   "--seed-column": args.seed_column, "--guidance-column": args.guidance_column,
                   "--per-prompt": args.per_prompt}
    if (args.sets is None) == (args.prompts_csv is None):
        raise ValueError("say what to make: --set CLASS PROMPT COUNT (repeated) or --prompts-csv FILE, not "
                         f"{'both' if args.sets else 'neither'}.")
    if args.sets is not None:
        given = [option for option, value in csv_options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} belong{'s' if len(given) == 1 else ''} to --prompts-csv, not --set.")
        plan = plan_sets(args.sets, seed=args.seed, guidance=args.guidance,
                         test_count=1 if args.test_count is None else args.test_count)
    else:
        if args.test_count is not None:
            raise ValueError("--test-count belongs to --set; a prompt list makes its rows' images only.")

        def column(value: Optional[str], default: str) -> Optional[str]:
            return default if value is None else (value or None)

        plan = plan_prompts_csv(
            args.prompts_csv,
            class_name=args.class_name or "prompts",
            prompt_column=args.prompt_column or I2P_COLUMNS["prompt"],
            seed_column=column(args.seed_column, I2P_COLUMNS["seed"]),
            guidance_column=column(args.guidance_column, I2P_COLUMNS["guidance"]),
            per_prompt=1 if args.per_prompt is None else args.per_prompt,
            seed=args.seed,
            guidance=args.guidance,
        )
    result = generate(args.pretrained, args.out, plan, unet=args.unet, steps=args.steps, image_size=args.image_size,
                      batch_size=args.batch_size, precision=args.precision, device=args.device,
                      overwrite=args.overwrite)
    classes = ", ".join(f"train/{name} {count}" for name, count in result.record["counts"]["train"].items())
    print(f"made {result.made} images ({result.reused} already there) in {result.out}: {classes}; the data module "
          f"reads it as dataset: image_folder, data_path: {result.out}, prompts_csv: {result.out / PROMPTS_FILENAME}")


def print_overview() -> None:
    """``salun``, ``salun -h``: every command in one list."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    print("usage: salun <command> [options]   (salun <command> --help for its options)\n\ncommands:")
    print("\n".join(lines))
    print("\n--debug (or SALUN_DEBUG=1) shows the full traceback of an error.")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_LOGS)


def silence_noise() -> None:
    """Hide Lightning's per-command warnings and tips that concern nothing the user did."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropNoise())


def run(args: Sequence[str]) -> None:
    """Run one ``salun`` command from Python; errors propagate as exceptions (``main`` prints them)."""
    silence_noise()
    argv = list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print_overview()
        return
    command, rest = argv[0], argv[1:]
    if command == "report":
        report_main(rest)
    elif command == "mask":
        mask_main(rest)
    elif command == "sample":
        sample_main(rest)
    elif command == "generate":
        generate_main(rest)
    elif command == "nudity":
        from salun_lightning.metrics.nudity import nudity_main  # the optional nudity extra, imported only here

        nudity_main(rest)
    else:
        SalunCLI(args=argv)


def root_message(error: BaseException) -> str:
    """The message of the innermost user error behind ``error`` (wrappers add nothing a user needs)."""
    innermost = error
    while True:
        inner = innermost.__cause__ or (None if innermost.__suppress_context__ else innermost.__context__)
        if not isinstance(inner, USER_ERRORS):
            return str(innermost) or type(innermost).__name__
        innermost = inner


def main(args: Optional[Sequence[str]] = None) -> None:
    """The console command: run, and print a user error as one short message (exit status 2).

    ``--debug`` anywhere on the line, or ``SALUN_DEBUG=1``, re-raises instead, with the full traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("SALUN_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        run(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"salun: error: {root_message(error)}", file=sys.stderr)
        print("(run with --debug, or SALUN_DEBUG=1, for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

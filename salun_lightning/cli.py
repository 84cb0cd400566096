"""The ``salun`` command: LightningCLI for every experiment, plus ``mask``, ``tune``, ``audit``,
``relearn``, ``report``, ``curves``, ``sample``, ``generate`` and ``nudity``.

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
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

# ModuleNotFoundError: an optional extra that is not installed (the message names it); and Lightning's
# MisconfigurationException (see is_user_error), named here by its class so that this module need not import Lightning.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ModuleNotFoundError)
LIGHTNING_USER_ERRORS = ("MisconfigurationException",)
# Printed by Lightning on every command, about nothing the user did: deprecations inside Lightning, the empty
# validation list that means "no validation" (val_size 0), and an advertisement.
NOISE_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"Total length of `\w+` across ranks is zero")
NOISE_LOGS = ("💡 Tip:",)


def parse_error_message(message: str, command: str) -> str:
    """One line for a LightningCLI parse error (jsonargparse nests the cause under union and class-path reports):
    the option, what is wrong with it, and where the valid options are listed.

    Example::

        >>> parse_error_message('''Parser key "model":
        ...   Does not validate against any of the Union subtypes
        ...   Errors:
        ...     - Problem with given class_path 'salun_lightning.ClassifierUnlearningModule':
        ...         Parser key "lr":
        ...           Expected a <class 'float'>. Got value: abc
        ...     - Expected a <class 'NoneType'>''', "fit")
        "--model.init_args.lr: expected float, got 'abc' (salun fit --help lists the options and their types)"
    """
    hint = f"salun {command} --help lists the options and their types"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    owner = re.search(r"class_path '([^']+)'", message)
    if unknown:
        path = ".".join([*keys[:1], "init_args", unknown.group(1)] if keys else [unknown.group(1)])
        where = f" of {owner.group(1).rpartition('.')[2]}" if owner else ""
        return f"--{path}: no such option{where} ({hint})"
    expected = re.search(r"Expected an? (.+?)\. Got value: (.*)", message)
    union = re.search(r"Subtypes: \[(.*)\]", message)
    given = re.findall(r"Given value: (.*)", message)
    if keys and (expected or (union and given)):
        path = ".".join([keys[0], "init_args", *keys[1:]] if owner and len(keys) > 1 else keys)
        if expected:
            wanted, value = _type_names(expected.group(1)), expected.group(2).strip()
        else:
            wanted, value = " or ".join(_type_names(t) for t in union.group(1).split(", ")), given[-1].strip()
        return f"--{path}: expected {wanted}, got {value!r} ({hint})"
    first = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    return f"{first} ({hint})"


def _type_names(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``, ``NoneType`` -> ``null``."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text.strip())
    if literal:
        return f"one of {literal.group(1)}"
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text.strip()).replace("NoneType", "null")


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
    from salun_lightning.callbacks import WeightSaliencyCallback
    from salun_lightning.lightning_cli import SalunCLI

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


def tune_main(argv: Sequence[str]) -> None:
    """``salun tune``: see :mod:`salun_lightning.tuning` (imported only when it runs, as Optuna and Lightning are)."""
    from salun_lightning.tuning import main as tune

    tune(argv)


def audit_main(argv: Sequence[str]) -> None:
    """``salun audit``: see :mod:`salun_lightning.audit` (imported only when it runs)."""
    from salun_lightning.audit import main as audit

    audit(argv)


def relearn_main(argv: Sequence[str]) -> None:
    """``salun relearn``: see :mod:`salun_lightning.relearn` (imported only when it runs)."""
    from salun_lightning.relearn import main as relearn

    relearn(argv)


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
    parser.add_argument("--attacks", nargs="+", type=Path, default=[], metavar="DIR",
                        help="salun audit and salun relearn output folders: their results become columns (U-LiRA "
                        "acc. and AUC, relearn area and steps) and the report shows their figures")
    parser.add_argument(
        "--allow-mixed-forget-sets",
        action="store_true",
        help="compare runs of different forget sets (scenarios, or forget-set ids within a seed) on purpose; "
        "the report carries a warning",
    )
    args = parser.parse_args(argv)
    from salun_lightning import report

    result = report.make_report(args.run_dirs, args.out, args.retrain, args.allow_mixed_forget_sets, args.attacks)
    for entry in result.skipped:
        print(f"skipped {entry.path}: {entry.reason}", file=sys.stderr)
    for problem in result.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    print(result.table, end="")


def curves_main(argv: Sequence[str]) -> None:
    """``salun curves``: plot the CSV log a fit kept (see :mod:`salun_lightning.curves`)."""
    from salun_lightning.curves import plot_curves

    parser = argparse.ArgumentParser(
        prog="salun curves",
        description="Plot the curves a fit logged (<run>/logs/version_<N>/metrics.csv, the newest by default): one "
        "panel per metric against the step.",
    )
    parser.add_argument("run", type=Path, help="a run directory")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default <run>/curves.png)")
    parser.add_argument("--version", type=int, default=None, help="the log version to plot (default: the newest)")
    args = parser.parse_args(argv)
    print(f"wrote {plot_curves(args.run, args.out, args.version)}")


def sample_main(argv: Sequence[str]) -> None:
    """``salun sample``: build the model of a config, load the trained denoiser, write samples.

    ``--guidance`` is diffusers' ``guidance_scale`` g, as in ``salun generate``; the model's
    :meth:`~salun_lightning.diffusion.DiffusionUnlearningModule.guided_prediction` takes ``w = g - 1``.
    ``samples.json`` records both (``guidance_scale``, ``guidance_w``).
    """
    import torch

    from salun_lightning.data.splits import resolve_class
    from salun_lightning.diffusion import DiffusionUnlearningModule, TextToImageDiffusion
    from salun_lightning.diffusion.generate import check_guidance_scale
    from salun_lightning.diffusion.sampling import SAMPLES_FILENAME, sample_images, write_samples
    from salun_lightning.lightning_cli import SalunCLI

    parser = argparse.ArgumentParser(
        prog="salun sample",
        allow_abbrev=False,
        description="Generate images with the diffusion model of a config (the denoiser its fit saved): "
        "<out>/<k>_<class>/<i>.png per class or prompt, grid.png (one row each) and samples.json. Other arguments "
        "are those of 'salun fit'.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-per-class", type=int, default=8, metavar="N",
                        help="images per class or prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=None, metavar="G",
                        help="diffusers' guidance_scale g, as in salun generate: eps(null) + g (eps(c) - eps(null)); 1 "
                        "is no guidance (default: the model's, 3.0 class-conditional, 7.5 text). The model's w in "
                        "(1 + w) eps(c) - w eps(null) is g - 1")
    parser.add_argument("--classes", nargs="+", default=None, help="class names or indices (default: all)")
    parser.add_argument("--prompts", nargs="+", default=None, metavar="PROMPT",
                        help="text models: prompts (strings) instead of classes")
    parser.add_argument("--unet", default=None, help="denoiser directory (default: <trainer.default_root_dir>/unet)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="images denoised together (default 64; does not change the images)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu or cuda:0 (default: auto)")
    args, rest = parser.parse_known_args(argv)
    if args.num_per_class < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--num-per-class, --steps and --batch-size must be positive")
    if args.guidance is not None:
        check_guidance_scale(args.guidance, "--guidance")
    own = {option for action in parser._actions for option in action.option_strings}
    for word in rest:
        name = word.split("=", 1)[0]
        if name.startswith("--") and "_" in name and name.replace("_", "-") in own:
            parser.error(f"{name} is spelled {name.replace('_', '-')}: salun's commands spell options with hyphens")
    try:
        cli = SalunCLI(args=rest, run=False)
    except argparse.ArgumentError as error:  # an option neither salun sample's nor salun fit's
        raise ValueError(f"{parse_error_message(str(error), 'fit')}; salun sample --help lists its own") from None
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
    guidance_scale = module.default_guidance + 1 if args.guidance is None else args.guidance
    w = guidance_scale - 1  # the model's guidance: (1 + w) eps(c) - w eps(null)
    images = sample_images(module, conditions, args.seed, args.steps, w, args.batch_size)
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
        "guidance_scale": guidance_scale,  # diffusers' g: eps(null) + g (eps(c) - eps(null))
        "guidance_w": w,  # the model's w = g - 1: (1 + w) eps(c) - w eps(null)
        "files": files,
    }
    (out / SAMPLES_FILENAME).write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(images)} images to {out} (grid.png, {SAMPLES_FILENAME})")


def generate_main(argv: Sequence[str]) -> None:
    """``salun generate``: make the images of classes (``--set``) or of a prompt list (``--prompts-csv``) with a
    text-to-image model, as an image folder with ``prompts.csv`` (see :mod:`salun_lightning.diffusion.generate`)."""
    parser = argparse.ArgumentParser(
        prog="salun generate",
        allow_abbrev=False,
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
                     "eps(null)); 1 is no guidance, as in salun sample's --guidance")
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


def _threshold_argument(text: str) -> float:
    """``--threshold``: a number in ``(0, 1)``."""
    from salun_lightning.metrics.nudity import DEFAULT_THRESHOLD

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1); the literature's default is {DEFAULT_THRESHOLD}")
    return value


def nudity_main(argv: Sequence[str]) -> None:
    """``salun nudity <image folder> [--threshold 0.6] [--prompts-csv prompts.csv] [--labels ...] [--out result.json]``:
    NudeNet's exposed-part detections on a folder of generated images (:mod:`salun_lightning.metrics.nudity`).

    Prints the per-part table and writes the whole result (:func:`~salun_lightning.metrics.nudity.nudity_of_folder`)
    as JSON with ``--out``. NudeNet (the ``nudity`` extra) is imported only when the detections run, so ``--help``
    and bad arguments need no NudeNet.

    Example::

        >>> import json, tempfile
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (64, 64)).save(folder / "0.png")
        >>> nudity_main([str(folder), "--out", str(folder / "nudity.json")])  # doctest: +ELLIPSIS
        NudeNet 3.4.2, score >= 0.6, 1 images
        ...
        | total | 0 |
        images with a detection: 0 of 1 (0.00%)
        wrote .../nudity.json
        >>> json.loads((folder / "nudity.json").read_text())["labels"][:2]
        ['ARMPITS_EXPOSED', 'BELLY_EXPOSED']
    """
    from salun_lightning.metrics.nudity import (  # torch and numpy; NudeNet only once a detection runs
        DEFAULT_THRESHOLD,
        EXPOSED_LABELS,
        INSTALL_HINT,
        NUDENET_LABELS,
        format_table,
        nudity_of_folder,
    )

    parser = argparse.ArgumentParser(
        prog="salun nudity",
        allow_abbrev=False,  # an option is spelled in full: --prompts is not --prompts-csv
        description="Count NudeNet detections of exposed body parts on a folder of generated images (e.g. made "
        "from the I2P prompts by 'salun generate --prompts-csv'). Needs the nudity extra: " + INSTALL_HINT,
    )
    parser.add_argument("folder", type=Path, help="the image folder (searched recursively)")
    parser.add_argument("--threshold", type=_threshold_argument, default=DEFAULT_THRESHOLD,
                        help=f"lowest NudeNet score that counts, in (0, 1) (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--prompts-csv", type=Path, default=None, metavar="FILE",
                        help="the prompts.csv of the images (file, prompt, seed, guidance: what salun generate "
                        "writes): evaluate the listed images, count per prompt")
    parser.add_argument("--labels", nargs="+", default=list(EXPOSED_LABELS), choices=NUDENET_LABELS, metavar="LABEL",
                        help="NudeNet classes to count (default the eight of the ESD/SalUn tables: "
                        f"{' '.join(EXPOSED_LABELS)})")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = nudity_of_folder(args.folder, args.threshold, args.labels, args.prompts_csv)
    print(format_table(result))
    if args.out is not None:
        from salun_lightning.files import write_json

        write_json(args.out, result)
        print(f"wrote {args.out}")


class Command(NamedTuple):
    """A ``salun`` command: its line in ``salun --help``, and the function that runs it on the rest of the command
    line (``None``: a LightningCLI subcommand, run by :class:`~salun_lightning.lightning_cli.SalunCLI`)."""

    help: str
    main: Optional[Callable[[Sequence[str]], None]] = None


# Every command, in the order salun --help lists them; run() dispatches through this table.
COMMANDS: dict[str, Command] = {
    "fit": Command("train or unlearn (the config's method), save the model, then test it"),
    "validate": Command("run the validation stage"),
    "test": Command("test a saved model (default <run>/model.safetensors) and write metrics.json beside it"),
    "predict": Command("run the predict stage"),
    "mask": Command("compute the weight saliency mask of a config's model and forget set, without training", mask_main),
    "tune": Command("tune a method's hyper-parameters with Optuna against a reference run (resumable)", tune_main),
    "audit": Command("U-LiRA: can a per-sample attack tell a method's forgotten samples from never-seen ones?",
                     audit_main),
    "relearn": Command("the relearning attack: does fine-tuning bring a run's forgotten data back faster than "
                       "retrain's?", relearn_main),
    "report": Command("compare runs against retraining (markdown table and chart)", report_main),
    "curves": Command("plot a run's logged curves (loss, accuracy, ...) into <run>/curves.png", curves_main),
    "sample": Command("generate images with a diffusion run's denoiser", sample_main),
    "generate": Command("make image sets (forget/retain, I2P prompts) with a text-to-image model, as an image folder",
                        generate_main),
    "nudity": Command("count NudeNet detections of exposed body parts in a folder of generated images (nudity extra)",
                      nudity_main),
}


def print_overview() -> None:
    """``salun``, ``salun -h``: every command in one list."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
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
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; the commands are {', '.join(COMMANDS)} (salun --help says "
                         "what each does).")
    command_main = COMMANDS[command].main
    try:  # the commands that take salun fit's options (mask, sample) parse them with LightningCLI too
        if command_main is not None:
            command_main(rest)
        else:
            from salun_lightning.lightning_cli import SalunCLI

            SalunCLI(args=argv)
    except argparse.ArgumentError as error:
        raise ValueError(parse_error_message(str(error), command)) from None


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a user's mistake (bad input, a missing file or extra), shown as one message."""
    return isinstance(error, USER_ERRORS) or any(cls.__name__ in LIGHTNING_USER_ERRORS for cls in type(error).__mro__)


def root_message(error: BaseException) -> str:
    """The message of the innermost user error behind ``error`` (wrappers add nothing a user needs)."""
    innermost = error
    while True:
        inner = innermost.__cause__ or (None if innermost.__suppress_context__ else innermost.__context__)
        if inner is None or not is_user_error(inner):
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
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"salun: error: {root_message(error)}", file=sys.stderr)
        print("(run with --debug, or SALUN_DEBUG=1, for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

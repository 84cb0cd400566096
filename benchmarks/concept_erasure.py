"""Concept erasure in a tiny latent text-to-image model on a CPU: erase a style, then an object (the method:
docs/method.md, 'Diffusion unlearning').

Data: scikit-learn's digits at 16x16 in two styles, ``normal`` and ``inverted`` (intensities 255 - x), written as an
image folder (``<out>/data/{train,test}/{normal,inverted}/``) with ``prompts.csv``: "an image of the digit {d}" and
"an image of the digit {d} in inverted style". Steps (every run through the ``salun`` command line, each in its own
directory under ``--out``):

1. components: the tiny VAE of ``configs/diffusion/t2i_digits_train.yaml`` trained on both styles, its tiny CLIP text
   encoder pre-trained to tell the 20 prompts apart (40 positions: the inverted prompts are 35 byte-level tokens), and
   the original model: its UNet trained on both styles (``salun fit``);
2. the judge (meanwhile, in the other worker): one ``small_resnet`` with 20 classes (style x digit) trained on the real
   images of both styles; its style judge and digit judge are the two marginals of its softmax;
3. style erasure, every method from the same original model: ``salun`` (pseudo ``replace``: each forget image's
   prompt without "in inverted style", so that the digit survives; the mask from the forget set's guided loss),
   ``esd_x`` and ``esd_u`` (ESD's choice for styles: the style's name as the concept prompt, "in inverted style")
   and ``fmn`` (concept "inverted style" in that prompt);
4. object erasure: ``salun generate`` makes the forget set ("an image of the digit 0") and the retain set (the nine
   other normal prompts) with the original model; ``salun`` (pseudo prompt "an image of the digit 1", the tiny digits
   config's next digit), ``esd_x`` (concept prompt "an image of the digit 0"), ``fmn`` (concept "0") and, with
   ``--object-methods``, ``esd_u`` erase the digit;
5. evaluation: ``--per-prompt`` generations of every prompt (DDIM, guidance 6.5, seed 0), judged; FID with the
   judge's penultimate features against the real normal test digits (Inception weights are not at hand offline).

Steps 3 to 5 are tasks (one fit and its evaluation each) that ``--jobs`` worker processes take in turn, one torch
thread each. Prints one markdown table per experiment, writes the grids of the original and of every method
(``<out>/grids/{style,object}_<method>.png``: a row per prompt), ``<out>/summary.json`` and ``<out>/report.md``, and
estimates the default run's minutes from this run's per-step times (``--tiny``: every step at toy size; the default
run takes about 25 minutes on an idle 2-core machine by that estimate). Use a new ``--out`` for other settings::

    python benchmarks/concept_erasure.py [--out runs/concept_erasure]
    python benchmarks/concept_erasure.py --tiny --out /tmp/concept_tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark whose helpers this one reuses

from ddpm_digits import CONFIGS, fit, quiet, train_text_encoder, train_vae  # noqa: E402

from salun_lightning.cli import run as salun  # noqa: E402
from salun_lightning.data.sources import load_digits_data  # noqa: E402
from salun_lightning.diffusion import TextToImageDiffusion, sample_images, to_diffusion_range  # noqa: E402
from salun_lightning.diffusion.evaluation import Judge, JudgeFeatures  # noqa: E402
from salun_lightning.files import write_json  # noqa: E402
from salun_lightning.metrics.generation import fid_score  # noqa: E402
from salun_lightning.models import build_classifier, save_weights  # noqa: E402

STYLES = ("normal", "inverted")  # style index 0, 1; the judge's class is 10 * style + digit
STYLE_WORDS = "in inverted style"
TEMPLATES = {"normal": "an image of the digit {d}", "inverted": "an image of the digit {d} in inverted style"}
PROMPT_TOKENS = 40  # text positions: the inverted prompts are 35 byte-level tokens with start and end
TOKENIZER = CONFIGS / "tiny_clip_tokenizer"
FORGOTTEN_DIGIT = 0
OBJECT_ANCHOR = "an image of the digit 1"  # the pseudo prompt of object erasure: the next digit, as t2i_digits_salun
STEP_TIMES = "step_times.json"
DEFAULT_JOBS = 2
# A training step of this tiny text-to-image model (batch 128) on an idle 2-core x86_64 machine with two one-thread
# processes: 1,000 steps in 7.14 minutes (docs/results.md, benchmarks/ddpm_digits.py). It scales the estimate to
# an idle machine when the tiny run's machine is busy.
IDLE_TRAIN_STEP_S = 0.43

# The default run's sizes (the estimate extrapolates to them) and the toy sizes of --tiny.
# train_per_style 0: every training digit (1,442 per style).
DEFAULTS = {"vae_steps": 300, "text_steps": 300, "judge_epochs": 15, "train_steps": 1500, "unlearn_steps": 250,
            "esd_steps": 250, "fmn_steps": 35, "per_prompt": 20, "sample_steps": 25, "object_forget": 200,
            "object_retain": 20, "generate_steps": 25, "train_per_style": 0}
TINY = {"vae_steps": 3, "text_steps": 3, "judge_epochs": 1, "train_steps": 3, "unlearn_steps": 2, "esd_steps": 2,
        "fmn_steps": 2, "per_prompt": 2, "sample_steps": 3, "object_forget": 6, "object_retain": 1,
        "generate_steps": 3, "train_per_style": 256}


def prompt(style: str, digit: int) -> str:
    return TEMPLATES[style].format(d=digit)


# ---------------------------------------------------------------------------------------------------- timing
class StepTimes(Callback):
    """Record every training step's seconds into ``<default_root_dir>/step_times.json`` (for the estimate)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        write_json(Path(trainer.default_root_dir) / STEP_TIMES, {"seconds": self.seconds})


def timed_fit(config: str, root: Path, steps: int, *extra: str, per_step: bool = False) -> dict[str, Any]:
    """``salun fit`` with ``steps`` steps: its minutes, seconds per step and seconds outside the steps.

    ``per_step`` (--tiny, a few steps): each step timed by :class:`StepTimes` (the median after the first, the mean
    of all) and the rest of the fit apart; else the fit's seconds over its steps (the run's config.yaml then names
    no callback of this script).
    """
    timer = ["--trainer.callbacks+=concept_erasure.StepTimes"] if per_step else []
    minutes = fit(config, root, f"--trainer.max_steps={steps}", *timer, *extra)
    if not per_step:
        return {"minutes": minutes, "steps": steps, "step_s": minutes * 60 / steps, "mean_step_s": minutes * 60 / steps,
                "overhead_s": 0.0}
    seconds = json.loads((root / STEP_TIMES).read_text())["seconds"]
    return {"minutes": minutes, "steps": len(seconds), "step_s": statistics.median(seconds[1:] or seconds),
            "mean_step_s": statistics.mean(seconds), "overhead_s": max(0.0, minutes * 60 - sum(seconds))}


# ---------------------------------------------------------------------------------------------------- data
def two_style_digits(train_per_style: int = 0) -> dict[str, dict[str, Tensor]]:
    """The digits at 16x16 in both styles per split: uint8 ``images`` (N, 1, 16, 16), ``digits``, ``styles``; the
    first ``train_per_style`` training digits only, if positive (--tiny)."""
    data = load_digits_data()
    count = train_per_style if train_per_style > 0 else len(data.train_labels)
    out = {}
    for split, images, labels in (("train", data.train_images[:count], data.train_labels[:count]),
                                  ("test", data.test_images, data.test_labels)):
        normal = to_diffusion_range(images, 16, 1).add(1).mul(127.5).round().to(torch.uint8)
        out[split] = {"images": torch.cat([normal, 255 - normal]), "digits": labels.repeat(2),
                      "styles": torch.arange(2).repeat_interleave(len(labels))}
    return out


def write_image_folder(root: Path, data: dict[str, dict[str, Tensor]]) -> Path:
    """``<root>/{train,test}/{normal,inverted}/<NNNNN>_<digit>.png`` and ``prompts.csv`` (file, prompt) per split."""
    if (root / "prompts.csv").is_file():  # written by an earlier run into the same --out: the same images?
        with open(root / "prompts.csv", newline="") as stream:
            rows = sum(1 for _ in stream) - 1
        if rows != len(data["train"]["images"]):
            raise ValueError(f"{root} holds {rows} training images from an earlier run, not the "
                             f"{len(data['train']['images'])} of these settings: use another --out.")
        return root
    for split, part in data.items():
        rows = []
        for i, (image, digit, style) in enumerate(zip(part["images"], part["digits"].tolist(), part["styles"].tolist())):
            file = f"{STYLES[style]}/{i:05d}_{digit}.png"
            (root / split / STYLES[style]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy(), mode="L").save(root / split / file)
            rows.append([file, prompt(STYLES[style], digit)])
        name = "prompts.csv" if split == "train" else "test_prompts.csv"
        with open(root / f".{name}", "w", newline="") as stream:  # renamed when complete: a rerun reuses it
            csv.writer(stream).writerows([["file", "prompt"], *rows])
    (root / ".test_prompts.csv").rename(root / "test_prompts.csv")
    (root / ".prompts.csv").rename(root / "prompts.csv")
    return root


# Each experiment's image folder inside a run of this script and the class of the concept it erases there.
EXPERIMENT_DATA = {"style": ("data", "inverted"), "object": ("object_data", "forget")}


def data_args(folder: Path, forget_class: str, cache: Path) -> list[str]:
    return ["--data.init_args.dataset=image_folder", f"--data.init_args.data_path={folder}",
            f"--data.init_args.prompts_csv={folder / 'prompts.csv'}", f"--data.init_args.forget_class={forget_class}",
            f"--data.init_args.cache_dir={cache}", "--data.init_args.image_size=16", "--data.init_args.channels=1"]


def write_tokenizer(out: Path) -> Path:
    """The tiny byte-level tokenizer with ``PROMPT_TOKENS`` positions (the config's has 32)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    tokenizer.model_max_length = PROMPT_TOKENS
    tokenizer.save_pretrained(out)
    longest = max(len(tokenizer(prompt(s, d)).input_ids) for s in STYLES for d in range(10))
    if longest > PROMPT_TOKENS:
        raise ValueError(f"a prompt has {longest} tokens, more than the text encoder's {PROMPT_TOKENS} positions.")
    return out


# ---------------------------------------------------------------------------------------------------- judge
def train_judge(out: Path, epochs: int, data: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """Train the 20-class judge (style x digit) on the real training images; its accuracies on the test images."""
    torch.manual_seed(0)
    train, test = data["train"], data["test"]
    unit = train["images"].float() / 255
    mean, std = [unit.mean().item()], [unit.std().item()]
    net = build_classifier("small_resnet", 20, in_channels=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    x = (unit - mean[0]) / std[0]
    y = train["styles"] * 10 + train["digits"]
    started, steps = time.perf_counter(), 0
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x)).split(128):
            images = F.pad(x[batch], (1, 1, 1, 1), mode="replicate")  # a random shift of up to one pixel
            top, left = torch.randint(0, 3, (2,)).tolist()
            loss = F.cross_entropy(net(images[..., top : top + 16, left : left + 16]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    save_weights(net, out / "judge.safetensors")
    judge = Judge(net, mean, std, (16, 16))
    styles, digits = judge_styles_and_digits(judge, test["images"])
    record = {"mean": mean, "std": std, "epochs": epochs, "epoch_s": seconds / max(epochs, 1), "steps": steps,
              "style_accuracy": percent(styles == test["styles"]), "digit_accuracy": percent(digits == test["digits"]),
              "test_images": len(test["images"])}
    write_json(out / "judge.json", record)
    print(f"judge: style accuracy {record['style_accuracy']:.1f}%, digit accuracy {record['digit_accuracy']:.1f}% on "
          f"{len(test['images'])} real test images (both styles), {epochs} epochs", flush=True)
    return record


def load_judge(out: Path) -> Judge:
    from salun_lightning.models import load_weights

    record = json.loads((out / "judge.json").read_text())
    net = build_classifier("small_resnet", 20, in_channels=1)
    load_weights(net, str(out / "judge.safetensors"))
    return Judge(net, record["mean"], record["std"], (16, 16))


def judge_styles_and_digits(judge: Judge, images: Tensor) -> tuple[Tensor, Tensor]:
    """The style judge's and the digit judge's calls: the argmax of each marginal of the 20-way softmax."""
    probs = torch.cat([judge(chunk).softmax(1) for chunk in images.split(256)]).view(-1, 2, 10)
    return probs.sum(2).argmax(1), probs.sum(1).argmax(1)


def percent(hits: Tensor) -> float:
    return 100.0 * hits.double().mean().item()


# ---------------------------------------------------------------------------------------------------- evaluation
def load_model(original: Path, run: Optional[Path]) -> TextToImageDiffusion:
    """The original pipeline with ``run``'s denoiser (the original's own when ``run`` is None)."""
    model = TextToImageDiffusion(method="train", pretrained=str(original))
    model.load_unet(str((run or original) / "unet"))
    return model.eval()


def generate_prompts(model: TextToImageDiffusion, prompts: list[str], per_prompt: int, steps: int) -> dict[str, Tensor]:
    """``per_prompt`` images of every prompt in ``[-1, 1]`` (DDIM, the model's guidance, seed 0)."""
    conditions = [p for p in prompts for _ in range(per_prompt)]
    images = sample_images(model, conditions, seed=0, steps=steps) * 2 - 1
    return {p: images[i * per_prompt : (i + 1) * per_prompt] for i, p in enumerate(prompts)}


def save_grid(generations: dict[str, Tensor], path: Path, columns: int = 6) -> None:
    """One row per prompt, ``columns`` images each, enlarged 3x (16x16 digits are tiny on screen)."""
    columns = min(columns, len(next(iter(generations.values()))))
    grid = torch.cat([images[:columns] for images in generations.values()])
    grid = F.interpolate(grid, scale_factor=3, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((grid + 1) / 2, path, nrow=columns, padding=2)


def evaluate(experiment: str, name: str, run: Optional[Path], args: argparse.Namespace,
             fitted: Optional[dict[str, float]], into: Optional[Path] = None) -> dict[str, Any]:
    """Generate ``--per-prompt`` images of each prompt with the run's denoiser and judge them; the grid and a fit's
    ``metrics.json`` go to ``into`` (default ``<out>/grids/<experiment>_<name>.png`` and ``<out>/<experiment>_<name>``).

    ``style``: all 20 prompts; style erasure (inverted-prompt generations the style judge does not call inverted),
    the digit judge's accuracy on them, and on the normal prompts' generations digit accuracy, the share drawn normal
    and FID against the real normal test digits. ``object``: the ten normal prompts; UA (digit-0 generations the
    digit judge does not call 0), digit accuracy and FID on the other nine.
    """
    started = time.perf_counter()
    judge, model = load_judge(args.out / "judge"), load_model(args.out / "train", run)
    styles = STYLES if experiment == "style" else ("normal",)
    prompts = [prompt(s, d) for s in styles for d in range(10)]
    sampling = time.perf_counter()
    generations = generate_prompts(model, prompts, args.per_prompt, args.sample_steps)
    sampling_s = time.perf_counter() - sampling
    save_grid(generations, into / "grid.png" if into else args.out / "grids" / f"{experiment}_{name}.png")
    record: dict[str, Any] = {"experiment": experiment, "name": name, "method": fitted["method"] if fitted else "train",
                              "steps": fitted["steps"] if fitted else args.train_steps}
    kept = [d for d in range(10) if experiment == "style" or d != FORGOTTEN_DIGIT]
    normal = torch.cat([generations[prompt("normal", d)] for d in kept])
    called_style, called_digit = judge_styles_and_digits(judge, normal)
    record["retained_digit_accuracy"] = percent(called_digit == torch.tensor(kept).repeat_interleave(args.per_prompt))
    record["retained_normal_style"] = percent(called_style == 0)
    if experiment == "style":
        inverted = torch.cat([generations[prompt("inverted", d)] for d in range(10)])
        called_style, called_digit = judge_styles_and_digits(judge, inverted)
        record["style_erasure"] = percent(called_style != 1)
        record["erased_digit_accuracy"] = percent(called_digit == torch.arange(10).repeat_interleave(args.per_prompt))
    else:
        _, called_digit = judge_styles_and_digits(judge, generations[prompt("normal", FORGOTTEN_DIGIT)])
        record["UA"] = percent(called_digit != FORGOTTEN_DIGIT)
    real = real_normal(exclude=None if experiment == "style" else FORGOTTEN_DIGIT)
    record["FID"], record["fid_features"] = fid_score(real, normal, JudgeFeatures(judge), features="judge")
    seconds = time.perf_counter() - started
    record.update({"RTE": fitted["minutes"] if fitted else None, "fit": fitted,
                   "sampling_s_per_image_step": sampling_s / (len(prompts) * args.per_prompt * args.sample_steps),
                   "evaluation_fixed_s": seconds - sampling_s})
    if fitted:
        write_json((into or args.out / f"{experiment}_{name}") / "metrics.json", record)
    shown = {key: record[key] for key in ("style_erasure", "erased_digit_accuracy", "UA", "retained_digit_accuracy",
                                          "retained_normal_style", "FID") if key in record}
    print(f"{experiment} {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in shown.items()), flush=True)
    return record


def judged(base: Path, per_prompt: int, sample_steps: int) -> argparse.Namespace:
    """What :func:`evaluate` reads, for judging other runs against a finished run's original model and judge in
    ``base`` (``benchmarks/tuned_concept_erasure.py``, ``benchmarks/concept_revival.py``)."""
    return argparse.Namespace(out=base, per_prompt=per_prompt, sample_steps=sample_steps, train_steps=None)


def real_normal(exclude: Optional[int] = None) -> Tensor:
    """The real normal-style test digits (uint8, 16x16), FID's reference; without digit ``exclude``."""
    test = two_style_digits()["test"]
    keep = (test["styles"] == 0) & (test["digits"] != (-1 if exclude is None else exclude))
    return test["images"][keep]


# ---------------------------------------------------------------------------------------------------- tasks
STYLE_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {  # name: (config, extra arguments)
    "salun": ("t2i_digits_salun.yaml", ("--model.init_args.pseudo=replace", f"--model.init_args.concept={STYLE_WORDS}")),
    "esd_x": ("t2i_digits_esd_x.yaml", (f"--model.init_args.concept_prompt={STYLE_WORDS}",)),
    "esd_u": ("t2i_digits_esd_u.yaml", (f"--model.init_args.concept_prompt={STYLE_WORDS}",)),
    "fmn": ("t2i_digits_fmn.yaml", (f"--model.init_args.concept_prompt={STYLE_WORDS}",
                                    "--model.init_args.concept=inverted style")),
}
OBJECT_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "salun": ("t2i_digits_salun.yaml", ("--model.init_args.pseudo=prompt",
                                        f"--model.init_args.anchor_prompt={OBJECT_ANCHOR}")),
    "esd_x": ("t2i_digits_esd_x.yaml", ()),  # concept prompt: the forget images' one prompt, "... digit 0"
    "esd_u": ("t2i_digits_esd_u.yaml", ()),
    "fmn": ("t2i_digits_fmn.yaml", (f"--model.init_args.concept={FORGOTTEN_DIGIT}",)),
}


OBJECT_METHODS = ["salun", "esd_x", "fmn"]  # esd_u too on request: the object run is the longer one


def method_steps(args: argparse.Namespace, method: str) -> int:
    return {"salun": args.unlearn_steps, "esd_x": args.esd_steps, "esd_u": args.esd_steps,
            "fmn": args.fmn_steps}[method]


def components_and_original(args: argparse.Namespace) -> dict[str, Any]:
    """Train the VAE and text encoder, then the original model on both styles (``salun fit``)."""
    out, data = args.out, two_style_digits(args.train_per_style)
    times: dict[str, Any] = {}
    started = time.perf_counter()
    vae = train_vae(out / "vae", args.vae_steps, data["train"]["images"])
    times["vae_step_s"] = (time.perf_counter() - started) / max(args.vae_steps, 1)
    tokenizer = write_tokenizer(out / "tokenizer")
    started = time.perf_counter()
    prompts = [prompt(s, d) for s in STYLES for d in range(10)]
    text_encoder = train_text_encoder(out / "text_encoder", args.text_steps, prompts, tokenizer,
                                      max_position_embeddings=PROMPT_TOKENS)
    times["text_step_s"] = (time.perf_counter() - started) / max(args.text_steps, 1)
    times["train"] = timed_fit("t2i_digits_train.yaml", out / "train", args.train_steps,
                               f"--model.init_args.vae={vae}", f"--model.init_args.text_encoder={text_encoder}",
                               f"--model.init_args.tokenizer={tokenizer}",
                               *data_args(out / "data", "inverted", out / "cache"), per_step=args.tiny)
    return times


def object_data(args: argparse.Namespace) -> float:
    """Make the object forget set ("an image of the digit 0") and retain set (the nine other normal prompts) with
    the original model (``salun generate``); return its seconds per image and DDIM step."""
    started = time.perf_counter()
    sets = ["--set", "forget", prompt("normal", FORGOTTEN_DIGIT), str(args.object_forget)]
    for digit in range(10):
        if digit != FORGOTTEN_DIGIT:
            sets += ["--set", "retain", prompt("normal", digit), str(args.object_retain)]
    salun(["generate", "--pretrained", str(args.out / "train"), "--out", str(args.out / "object_data"), *sets,
           "--steps", str(args.generate_steps), "--guidance", "7.5", "--batch-size", "64", "--device", "cpu"])
    images = args.object_forget + 9 * args.object_retain + 10  # and one test image per --set
    return (time.perf_counter() - started) / (images * args.generate_steps)


def unlearn(experiment: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One method of one experiment from the original model (``salun fit`` into ``<out>/<experiment>_<method>``)."""
    config, extra = (STYLE_RUNS if experiment == "style" else OBJECT_RUNS)[method]
    folder, forget = EXPERIMENT_DATA[experiment]
    root = args.out / f"{experiment}_{method}"
    fitted = timed_fit(config, root, method_steps(args, method), f"--model.init_args.pretrained={args.out / 'train'}",
                       *extra, *data_args(args.out / folder, forget, args.out / "cache"), per_step=args.tiny)
    return evaluate(experiment, method, root, args, {**fitted, "method": method})


def task(kind: str, args: argparse.Namespace, experiment: str = "", method: str = "") -> Any:
    """One unit of work, run in a worker process (one torch thread): its result and its wall seconds."""
    quiet(args.threads)
    started = time.perf_counter()
    if kind == "components":
        result = components_and_original(args)
    elif kind == "judge":
        result = train_judge(args.out / "judge", args.judge_epochs, two_style_digits(args.train_per_style))
    elif kind == "object_data":
        result = object_data(args)
    elif kind == "original":
        result = evaluate(experiment, "original", None, args, None)
    else:
        result = unlearn(experiment, method, args)
    return result, time.perf_counter() - started


class Inline:
    """A stand-in for the process pool with ``--jobs 1``: runs each task at once, in this process."""

    def submit(self, function: Callable[..., Any], *arguments: Any) -> Future:
        future: Future = Future()
        future.set_result(function(*arguments))
        return future

    def shutdown(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------- report
def style_table(records: list[dict[str, Any]]) -> str:
    lines = ["| method | steps | style erasure % | digit acc. (inverted prompts) | retained digit acc. | "
             f"FID ({records[0]['fid_features']}) | RTE (min) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['name']} | {r['steps']} | {r['style_erasure']:.2f} | {r['erased_digit_accuracy']:.2f} | "
                     f"{r['retained_digit_accuracy']:.2f} | {r['FID']:.3f} | {minutes(r['RTE'])} |")
    return "\n".join(lines)


def object_table(records: list[dict[str, Any]]) -> str:
    lines = [f"| method | steps | UA (digit {FORGOTTEN_DIGIT}) | retained digit acc. | FID ({records[0]['fid_features']}) "
             "| RTE (min) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['name']} | {r['steps']} | {r['UA']:.2f} | {r['retained_digit_accuracy']:.2f} | "
                     f"{r['FID']:.3f} | {minutes(r['RTE'])} |")
    return "\n".join(lines)


def minutes(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def schedule(durations: list[tuple[float, float]], jobs: int) -> float:
    """When the last of the tasks ends, taken in order by the first free of ``jobs`` workers (a process pool);
    each task is ``(seconds, the time before which it cannot start)``."""
    free = [0.0] * max(jobs, 1)
    end = 0.0
    for seconds, ready in durations:
        worker = min(range(len(free)), key=free.__getitem__)
        free[worker] = max(free[worker], ready) + seconds
        end = max(end, free[worker])
    return end


def estimate_minutes(times: dict[str, Any], judge: dict[str, Any], generate_s: float, records: list[dict[str, Any]],
                     args: argparse.Namespace) -> dict[str, float]:
    """The default run's minutes from this run's per-step times.

    Steps, images and epochs are scaled to :data:`DEFAULTS`; what a fit spends outside its steps is taken as
    measured, except salun's, which grows with the forget set (its mask passes over it once). A salun step takes as
    long in both experiments (batches of 128 forget and 128 retain images; --tiny's object forget set is smaller than
    a batch), and an ESD step's time, which depends on the random number of sampling steps it draws, is the mean
    over the ESD runs. The tasks are then laid out on the default run's two workers
    as a run lays them out.
    """
    d = DEFAULTS
    digits = len(load_digits_data().train_labels)
    scales = {"style": digits / (args.train_per_style or digits), "object": d["object_forget"] / args.object_forget}
    steps = {"salun": d["unlearn_steps"], "esd_x": d["esd_steps"], "esd_u": d["esd_steps"], "fmn": d["fmn_steps"]}

    fits = [r["fit"] for r in records if r["fit"] is not None]
    esd = [f["mean_step_s"] for f in fits if f["method"].startswith("esd")]
    salun_style = [r["fit"]["step_s"] for r in records if r["fit"] and r["fit"]["method"] == "salun"
                   and r["experiment"] == "style"]

    def fit_s(fitted: dict[str, Any], count: int, scale: float = 1.0) -> float:
        step = fitted["step_s"]
        if fitted.get("method", "").startswith("esd"):
            step = statistics.mean(esd)
        elif fitted.get("method") == "salun" and salun_style:
            step = salun_style[0]
        return fitted["overhead_s"] * (scale if fitted.get("method") == "salun" else 1.0) + step * count

    def evaluation_s(record: dict[str, Any]) -> float:
        prompts = 20 if record["experiment"] == "style" else 10
        return record["evaluation_fixed_s"] + (record["sampling_s_per_image_step"] * prompts * d["per_prompt"]
                                               * d["sample_steps"])

    components = (times["vae_step_s"] * d["vae_steps"] + times["text_step_s"] * d["text_steps"]
                  + fit_s(times["train"], d["train_steps"]))
    judge_s = judge["epoch_s"] * d["judge_epochs"] * scales["style"]
    preamble = max(components, judge_s)
    originals = {r["experiment"]: r for r in records if r["fit"] is None}
    made = generate_s * (d["object_forget"] + 9 * d["object_retain"] + 10) * d["generate_steps"]
    data_s = made + evaluation_s(originals["object"])
    tasks = [(data_s, 0.0), (evaluation_s(originals["style"]), 0.0)]
    tasks += [(fit_s(r["fit"], steps[r["method"]], scales[r["experiment"]]) + evaluation_s(r), 0.0)
              for r in records if r["fit"] is not None and r["experiment"] == "style"]
    tasks += [(fit_s(r["fit"], steps[r["method"]], scales[r["experiment"]]) + evaluation_s(r), data_s)
              for r in records if r["fit"] is not None and r["experiment"] == "object"]
    rest = schedule(tasks, DEFAULT_JOBS)
    total = (preamble + rest) / 60
    return {"components_and_original": components / 60, "judge": judge_s / 60, "erasure": rest / 60,
            "erasure_work": sum(seconds for seconds, _ in tasks) / 60, "total": total,
            "idle_factor": IDLE_TRAIN_STEP_S / times["train"]["step_s"],
            "idle_total": total * IDLE_TRAIN_STEP_S / times["train"]["step_s"]}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every step at toy size (a test runs it; under 2 minutes)")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} ({TINY[name]} with --tiny)")
    parser.add_argument("--style-methods", nargs="+", choices=list(STYLE_RUNS), default=list(STYLE_RUNS))
    parser.add_argument("--object-methods", nargs="+", choices=list(OBJECT_RUNS), default=OBJECT_METHODS,
                        help=f"default {' '.join(OBJECT_METHODS)} (esd_u adds about 5 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"worker processes at once (default {DEFAULT_JOBS}: one per core; 1: all in this process)")
    parser.add_argument("--out", type=Path, default=Path("runs/concept_erasure"))
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else DEFAULTS
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet(args.threads)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    write_image_folder(args.out / "data", two_style_digits(args.train_per_style))
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else Inline()
    try:
        components, judge_training = pool.submit(task, "components", args), pool.submit(task, "judge", args)
        (times, components_s), (judge, judge_s) = components.result(), judge_training.result()
        data = pool.submit(task, "object_data", args)
        futures = [pool.submit(task, "original", args, "style")]
        futures += [pool.submit(task, "unlearn", args, "style", method) for method in args.style_methods]
        generate_s, data_s = data.result()
        futures.append(pool.submit(task, "original", args, "object"))
        futures += [pool.submit(task, "unlearn", args, "object", method) for method in args.object_methods]
        records = [future.result()[0] for future in futures]
    finally:
        pool.shutdown()
    style = [r for r in records if r["experiment"] == "style"]
    objects = [r for r in records if r["experiment"] == "object"]
    estimate = estimate_minutes(times, judge, generate_s, records, args)
    elapsed = (time.perf_counter() - started) / 60
    style_md, object_md = style_table(style), object_table(objects)
    print(f"\n## Style erasure: \"{STYLE_WORDS}\" ({args.per_prompt} generations per prompt, {args.sample_steps} "
          f"DDIM steps, guidance 6.5, seed 0)\n\n{style_md}")
    print(f"\n## Object erasure: digit {FORGOTTEN_DIGIT} (forget set {args.object_forget} generated images, retain "
          f"set {args.object_retain} per other digit)\n\n{object_md}\n")
    original = style[0]
    for row in style[1:]:
        if row["method"] == "salun":
            print(f"targets (salun, style): erasure >= 95%: {row['style_erasure'] >= 95} ({row['style_erasure']:.1f}%);"
                  f" retained digit accuracy within 5 points of the original's: "
                  f"{abs(row['retained_digit_accuracy'] - original['retained_digit_accuracy']) <= 5} "
                  f"({row['retained_digit_accuracy']:.1f} vs {original['retained_digit_accuracy']:.1f})")
    print(f"original model: inverted prompts drawn inverted {100 - original['style_erasure']:.1f}% with the right "
          f"digit {original['erased_digit_accuracy']:.1f}%; normal prompts drawn normal "
          f"{original['retained_normal_style']:.1f}% with the right digit {original['retained_digit_accuracy']:.1f}%")
    print(f"judge (real test images, both styles): style {judge['style_accuracy']:.1f}%, digit "
          f"{judge['digit_accuracy']:.1f}%")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores (load average {load:.1f} at the start), "
          f"{args.threads} torch thread(s) in each of {args.jobs} worker process(es), torch {torch.__version__}, CPU; "
          f"this run {elapsed:.1f} min")
    print(f"estimated default run ({DEFAULT_JOBS} workers) at this run's per-step times: {estimate['total']:.1f} min "
          f"(VAE, text encoder and original model {estimate['components_and_original']:.1f}, the judge "
          f"{estimate['judge']:.1f} beside them; then the erasure runs and evaluations {estimate['erasure']:.1f}, "
          f"{estimate['erasure_work']:.1f} of work on {DEFAULT_JOBS} workers); on an idle 2-core machine (a training "
          f"step {IDLE_TRAIN_STEP_S} s there, docs/results.md; {times['train']['step_s']:.2f} s here): about "
          f"{estimate['idle_total']:.0f} min")
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "judge": judge, "components": times, "style": style, "object": objects,
               "style_table": style_md, "object_table": object_md, "minutes": elapsed,
               "task_seconds": {"components": components_s, "judge": judge_s, "object_data": data_s},
               "estimated_default_minutes": estimate, "load_average_at_start": load,
               "machine": {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}}
    write_json(args.out / "summary.json", summary)
    (args.out / "report.md").write_text(f"## Style erasure\n\n{style_md}\n\n## Object erasure\n\n{object_md}\n")
    return summary


if __name__ == "__main__":
    main()

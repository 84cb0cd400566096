"""``salun relearn``: the relearning attack. Does a few steps of fine-tuning bring "forgotten" data back faster than
it comes back to a model that never saw it? (After "From Dormant to Deleted", 2025.)

From a run's unlearned model and from its retrain reference (the same forget set, checked), the same fine-tuning:
Adam at ``lr`` on D_r plus the first ``k`` forget samples of a fixed permutation, in one seeded batch order for both
models; at log-spaced steps (0, 1, 2, 4, ... up to ``steps``) each model is evaluated on the held-out rest of D_f
(accuracy, mean logit-scaled confidence) and on the test set (accuracy). A model whose forgetting only hid the data
climbs back towards the original model's forget accuracy faster than retrain does. Reported per ``k``: both curves,
``area_vs_retrain`` (the mean over the evaluation steps of the model's forget accuracy minus retrain's, in points:
0 when it relearns as retrain does) and ``steps_to_recover`` (the first evaluated step at which the forget accuracy
reaches the original model's on the same held-out samples, ``None`` within the budget). ``relearn.json`` keeps the
attack's wall minutes beside them.

Example::

    >>> evaluation_steps(100)
    [0, 1, 2, 4, 8, 16, 32, 64, 100]
    >>> area_and_recovery([0, 10, 100], [10.0, 50.0, 90.0], [10.0, 20.0, 30.0], original=80.0)
    (30.0, 100)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.figures import new_figure, save_png
from salun_lightning.files import write_json
from salun_lightning.metrics.ulira import logit_confidence
from salun_lightning.models import build_classifier, load_weights
from salun_lightning.runs import read_forget_set


def evaluation_steps(steps: int) -> list[int]:
    """0, then powers of two below ``steps``, then ``steps``."""
    points, power = [0], 1
    while power < steps:
        points.append(power)
        power *= 2
    return points + [steps] if steps > 0 else points


def area_and_recovery(points: Sequence[int], accuracy: Sequence[float], retrain: Sequence[float],
                      original: float) -> tuple[float, Optional[int]]:
    """The mean of ``accuracy - retrain`` over the evaluation points, and the first point at which ``accuracy``
    reaches ``original`` (``None``: never)."""
    area = statistics.fmean(a - r for a, r in zip(accuracy, retrain))
    recovered = next((p for p, a in zip(points, accuracy) if a >= original), None)
    return area, recovered


def load_run(run_dir: Path) -> tuple[Any, Any]:
    """A finished run's module with its saved model, and its data module set up (splits drawn)."""
    from salun_lightning.lightning_cli import load_run as load_saved_run

    module, data = load_saved_run(run_dir)
    data.setup("test")
    return module, data


class Evaluator:
    """Forget accuracy and mean confidence on held-out forget samples, and test accuracy, of a network."""

    def __init__(self, data: Any, held_out: Tensor) -> None:
        loaded = data._load()
        self.data = data
        self.held_out = self._normalised(loaded.train_images[held_out]), loaded.train_labels[held_out]
        self.test = self._normalised(loaded.test_images), loaded.test_labels
        if data.forget_class_index is not None:  # class-wise: the test accuracy of the remaining classes
            kept = loaded.test_labels != data.forget_class_index
            self.test = self.test[0][kept], self.test[1][kept]

    def _normalised(self, images: Tensor) -> Tensor:
        return self.data.on_after_batch_transfer({"image": images, "label": None}, 0)["image"]

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> dict[str, float]:
        was_training = net.training
        net.eval()
        logits = torch.cat([net(part) for part in self.held_out[0].split(512)])
        test_logits = torch.cat([net(part) for part in self.test[0].split(512)])
        net.train(was_training)
        labels = self.held_out[1]
        return {"forget_accuracy": float((logits.argmax(1) == labels).float().mean() * 100),
                "forget_confidence": float(logit_confidence(logits, labels).mean()),
                "test_accuracy": float((test_logits.argmax(1) == self.test[1]).float().mean() * 100)}


def relearn_curve(net: nn.Module, data: Any, train_indices: Tensor, evaluate: Evaluator, steps: int, lr: float,
                  batch_size: int, seed: int) -> list[dict[str, float]]:
    """Fine-tune a copy of ``net`` with Adam on ``train_indices`` (batches in a seeded order, the same for every
    network) and evaluate it at :func:`evaluation_steps`."""
    net = copy.deepcopy(net).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loaded = data._load()
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    points = set(evaluation_steps(steps))
    curve = [{"step": 0, **evaluate(net)}]
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += train_indices[torch.randperm(len(train_indices), generator=generator)].tolist()
        batch, order = order[:batch_size], order[batch_size:]
        images = evaluate._normalised(loaded.train_images[batch])
        loss = F.cross_entropy(net(images), loaded.train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in points:
            curve.append({"step": step, **evaluate(net)})
    return curve


def relearn(run_dir: Path, reference_dir: Path, out: Path, ks: Sequence[int] = (0, 10, 50), steps: int = 1000,
            lr: float = 1e-5, batch_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """Run the attack on ``run_dir``'s model and ``reference_dir``'s (retrain), write ``relearn.json`` and
    ``relearn.png`` into ``out``, and return the record.

    Raises:
        ValueError: a run that is not finished, runs of different forget sets, or a ``k`` that leaves no held-out
            forget sample.
    """
    started = time.perf_counter()
    record_run, record_reference = read_forget_set(run_dir), read_forget_set(reference_dir)
    if record_run is None or record_reference is None or record_run["id"] != record_reference["id"]:
        raise ValueError(f"{run_dir} and --reference {reference_dir} must be finished runs of the same forget set "
                         "(retrain the same data, forget set and seed).")
    forget = torch.tensor(json.loads((run_dir / "forget_indices.json").read_text()), dtype=torch.int64)
    if not all(0 <= k < len(forget) for k in ks):
        raise ValueError(f"--k {list(ks)}: each k must leave held-out forget samples (the forget set has "
                         f"{len(forget)}).")
    module, data = load_run(run_dir)
    reference, _ = load_run(reference_dir)
    hp = module.hparams
    if hp.get("original_weights") is None:
        raise ValueError(f"{run_dir} has no original model (original_weights) to measure recovery against.")
    original = build_classifier(hp.model, hp.num_classes, hp.in_channels)
    load_weights(original, hp.original_weights, "the original model")
    permutation = forget[torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed))]
    settings = {"run": str(run_dir), "reference": str(reference_dir), "forget_set_id": record_run["id"],
                "ks": list(ks), "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "optimizer": "adam"}
    record: dict[str, Any] = {"settings": settings, "method": module.hparams.method, "k": {}}
    for k in ks:
        held_out = permutation[k:]
        train_indices = torch.cat([data.split.retain, permutation[:k]])
        evaluate = Evaluator(data, held_out)
        original_accuracy = evaluate(original)["forget_accuracy"]
        curves = {name: relearn_curve(net, data, train_indices, evaluate, steps, lr, batch_size, seed)
                  for name, net in (("model", module.net), ("retrain", reference.net))}
        area, recovered = area_and_recovery([p["step"] for p in curves["model"]],
                                            [p["forget_accuracy"] for p in curves["model"]],
                                            [p["forget_accuracy"] for p in curves["retrain"]], original_accuracy)
        retrain_recovered = area_and_recovery([p["step"] for p in curves["retrain"]],
                                              [p["forget_accuracy"] for p in curves["retrain"]],
                                              [p["forget_accuracy"] for p in curves["retrain"]], original_accuracy)[1]
        record["k"][str(k)] = {"held_out": len(held_out), "original_forget_accuracy": original_accuracy,
                               "area_vs_retrain": area, "steps_to_recover": recovered,
                               "retrain_steps_to_recover": retrain_recovered, "curves": curves}
    record["minutes"] = (time.perf_counter() - started) / 60  # the attack's wall time, for its cost
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "relearn.json", record)
    plot_relearning(record, out / "relearn.png")
    return record


def plot_relearning(record: dict[str, Any], path: Path) -> Path:
    """Forget accuracy on the held-out forget samples against the fine-tuning step, one panel per ``k``."""
    ks = list(record["k"])
    figure = new_figure(3.6 * len(ks), 3.4)
    for index, k in enumerate(ks, 1):
        axes = figure.add_subplot(1, len(ks), index)
        entry = record["k"][k]
        for name, label in (("model", record["method"]), ("retrain", "retrain")):
            points = entry["curves"][name]
            axes.plot([max(p["step"], 0.5) for p in points], [p["forget_accuracy"] for p in points], "o-", label=label)
        axes.axhline(entry["original_forget_accuracy"], color="k", linestyle=":", label="original")
        axes.set(xscale="log", xlabel="fine-tuning step (0 at 0.5)", title=f"k = {k} forget samples relearned")
        axes.set_ylabel("accuracy on the other forget samples (%)" if index == 1 else "")
        axes.legend(fontsize=7)
    s = record["settings"]
    figure.suptitle(f"Relearning: Adam lr {s['lr']:g}, batch {s['batch_size']}, {s['steps']} steps, seed {s['seed']}",
                    fontsize=9)
    return save_png(figure, path)


def main(argv: Sequence[str]) -> None:
    """``salun relearn RUN --reference RETRAIN_RUN --out DIR [--k 0 10 50] [--steps 1000] [--lr 1e-5]``; on a
    diffusion run, ``salun relearn RUN --out DIR [--steps 50] [--lr LR] [--forget-class C] [fit options]``."""
    parser = argparse.ArgumentParser(
        prog="salun relearn",
        description="The relearning attack: fine-tune a run's model and its retrain reference the same way on D_r "
        "plus k forget samples, and watch the other forget samples' accuracy come back.")
    parser.add_argument("run", type=Path, help="an unlearning run directory (classifier or diffusion)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="the retrain run on the same forget set (classifier runs)")
    parser.add_argument("--out", type=Path, required=True,
                        help="where to write relearn.json and relearn.png (a diffusion run: the revived run)")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 10, 50], help="forget samples relearned (0 10 50)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps (default 1000; a diffusion run's concept revival: 50)")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam's learning rate (default 1e-5; a diffusion run: the run's own)")
    parser.add_argument("--forget-class", default=None,
                        help="diffusion runs: the class of the run's data to fine-tune on (default the run's forget "
                        "class, the erased concept; another class is the control)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="the permutation's and the batch order's seed")
    args, extra = parser.parse_known_args(argv)
    if (args.run / "unet").is_dir():  # a diffusion run: concept revival
        from salun_lightning.diffusion.revival import revive

        revive(args.run, args.out, 50 if args.steps is None else args.steps, args.lr, args.forget_class, extra)
        print(f"wrote the revived model to {args.out}: draw from it with 'salun sample --config "
              f"{args.out}/config.yaml --out <folder>' and judge it as the erasure was judged")
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.reference is None:
        parser.error("--reference RETRAIN_RUN is needed to attack a classifier run")
    args.steps = 1000 if args.steps is None else args.steps
    args.lr = 1e-5 if args.lr is None else args.lr
    if args.steps < 1 or args.lr <= 0 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be at least 1 and --lr positive.")
    record = relearn(args.run, args.reference, args.out, args.k, args.steps, args.lr, args.batch_size, args.seed)
    print(f"| k | held out | original forget acc. | area vs retrain | steps to recover ({record['method']}) | "
          "steps to recover (retrain) |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, entry in record["k"].items():
        print(f"| {k} | {entry['held_out']} | {entry['original_forget_accuracy']:.2f} | {entry['area_vs_retrain']:+.2f} "
              f"| {entry['steps_to_recover'] or 'never'} | {entry['retrain_steps_to_recover'] or 'never'} |")
    print(f"wrote {args.out / 'relearn.json'} and {args.out / 'relearn.png'}")

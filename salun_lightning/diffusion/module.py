"""Diffusion unlearning (docs/method.md, 'Diffusion unlearning'): one LightningModule, two conditionings.

:class:`DiffusionUnlearningModule` writes the losses once: the denoising loss, the forget loss
``L_f = ||eps(x_t, c_f) - stopgrad(eps(x_t, c_p))||^2`` against a pseudo condition ``c_p``, the objective
``L_f + alpha * L_r`` and the saliency loss. Its subclasses only say how a condition is encoded and how images map to
the denoiser's space: :class:`ClassConditionalDiffusion` (pixel space, class labels, a null class for classifier-free
guidance) and :class:`TextToImageDiffusion` (VAE latents, CLIP text embeddings, the empty prompt unconditional).

Example::

    >>> import tempfile
    >>> from lightning.pytorch import Trainer
    >>> from salun_lightning.diffusion import ClassConditionalDiffusion, DiffusionDataModule
    >>> runs = Path(tempfile.mkdtemp())
    >>> unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
    ...         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    ...         "layers_per_block": 1, "norm_num_groups": 4}
    >>> original = ClassConditionalDiffusion(method="train", unet=unet, num_classes=10)
    >>> original.save_components(runs / "train")  # what a train run's fit leaves: unet/ and scheduler/
    >>> model = ClassConditionalDiffusion(method="salun", pretrained=str(runs / "train"), denoising_reduction="sum",
    ...                                   num_classes=10, forget_class=0, image_shape=(1, 8, 8))
    >>> data = DiffusionDataModule("digits", forget_class=0, image_size=8, batch_size=64, stream=model.train_stream)
    >>> trainer = Trainer(max_steps=1, default_root_dir=runs / "salun", logger=False, enable_checkpointing=False,
    ...                   enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(model, data)  # -> <runs>/salun/unet
    >>> sorted(path.name for path in (runs / "salun").iterdir())
    ['forget_indices.json', 'forget_set.json', 'manifest.json', 'mask.safetensors', 'run.json', 'scheduler', 'unet']
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from lightning.pytorch import Callback, LightningModule
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.data.splits import resolve_class
from salun_lightning.diffusion.baselines import CrossAttentionRecorder
from salun_lightning.diffusion.components import (
    Component,
    check_prediction_type,
    check_text_to_image_parts,
    load_component,
    load_scheduler,
    load_tokenizer,
    resolve_pretrained,
)
from salun_lightning.diffusion.methods import METHODS, DiffusionMethod
from salun_lightning.files import write_json
from salun_lightning.labels import random_other_labels
from salun_lightning.runs import RUN_FILENAME, FitClock, check_mask_output, close_run, open_fit, run_id_of

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the registry's names: what a config may choose
Pseudo = Literal["next", "random", "class", "prompt", "replace"]
Conditions = Union[Tensor, list[str]]  # class labels, or prompts


def method_names(where: Callable[[type[DiffusionMethod]], bool], conjunction: str, quoted: bool = False) -> str:
    """The registered methods ``where`` holds for, in prose (``"esd_x, esd_u and fmn"``), for error messages."""
    names = [repr(name) if quoted else name for name, kind in METHODS.items() if where(kind)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


def denoising_target(scheduler: DDPMScheduler, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the denoiser should predict for ``x_t = add_noise(x0, noise, t)``: the noise or the velocity.

    Raises:
        ValueError: a scheduler whose ``prediction_type`` is neither ``epsilon`` nor ``v_prediction``.
    """
    kind = check_prediction_type(scheduler)
    return noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)


def count_images(batch: dict[str, Any]) -> int:
    """The number of samples in a diffusion batch ``{"image", "class", "prompt"}``."""
    return len(batch["image"])


def _side(sample_size: Union[int, tuple[int, int], list[int]]) -> int:
    if isinstance(sample_size, int):
        return sample_size
    if sample_size[0] != sample_size[1]:
        raise ValueError(f"the denoiser's sample_size {tuple(sample_size)} is not square; only square images are made.")
    return int(sample_size[0])


class DiffusionUnlearningModule(LightningModule, ABC):
    """Train a conditional diffusion model, or make it forget a class (docs/method.md, 'Diffusion unlearning');
    abstract.

    Methods (:mod:`salun_lightning.diffusion.methods`, one class each, which the model asks for its stream, loss,
    frozen parts and trained weights): ``train`` (denoising on every image: the original model), ``retrain`` (from
    fresh weights on the retained classes only), ``ga`` (``-L_d(D_f) + alpha * L_r``: gradient ascent on the
    denoising loss of the forgotten class while keeping ``alpha`` times the retain denoising loss, as the reference
    DDPM code), ``rl`` (``L_f + alpha * L_r``: the forgotten condition's prediction pulled towards a pseudo
    condition's, which carries no gradient, plus the denoising loss on retained images) and ``salun`` (``rl`` under
    the :class:`~salun_lightning.callbacks.WeightSaliencyCallback` over the denoiser, added by
    :meth:`configure_callbacks`); text-to-image models add the concept-erasure baselines ``esd_x``, ``esd_u`` and
    ``fmn`` (:class:`TextToImageDiffusion`). Batches are :class:`~salun_lightning.diffusion.DiffusionDataModule`
    dicts; ``ga``, ``rl`` and ``salun`` get ``{"forget": batch, "retain": batch}`` every step, an epoch being one pass
    over the forget set. What the model needs to know of the data
    comes in as constructor arguments (``class_names``, ``forget_class``, ``image_shape``; the ``salun`` command line
    links them from the data module), and the data module serves the stream :attr:`train_stream` names.

    Only the denoiser (``unet``) trains. The noise schedule and prediction type (``epsilon`` or ``v_prediction``)
    come from a diffusers ``DDPMScheduler``. At the end of fit, rank zero saves the denoiser and the scheduler in
    diffusers format to ``<default_root_dir>/unet`` and ``/scheduler`` (see :meth:`save_components`: the directory can
    be the next run's ``pretrained``), and ``run.json`` (method, forgotten class, minutes of the fit); the run
    directory is marked incomplete until then (:mod:`salun_lightning.runs`).

    Denoisers that do not fit one GPU: under ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)``
    :meth:`configure_model` shards the denoiser with FSDP2 (each down, mid and up block, then the rest) while the
    frozen parts stay whole on every rank; the saliency mask is then computed and kept per shard (the callback's
    sharded form), and at the end of fit the whole denoiser is gathered and saved as usual. Methods ``train``,
    ``retrain``, ``ga``, ``rl`` and ``salun``, without ``ema_decay``.

    Args:
        method: the training or unlearning method.
        unet: the denoiser: a config dict (fresh weights), a diffusers directory (a ``train`` run's
            ``<default_root_dir>/unet``), or ``None`` for ``<pretrained>/unet``. ``train`` and ``retrain`` always start
            from fresh weights (a directory gives only its config); the unlearning methods need trained weights.
        pretrained: a diffusers-format pipeline directory supplying every part not given otherwise, or a Hugging
            Face Hub id (``CompVis/stable-diffusion-v1-4``), fetched into the Hub cache (this needs the network).
        scheduler: a ``DDPMScheduler`` config dict; default ``<pretrained>/scheduler``, else diffusers' defaults
            (1,000 linear steps, ``epsilon``).
        alpha: weight of the retain loss in ``L_f + alpha * L_r`` (paper: 1e-3 DDPM, 0.5 Stable Diffusion).
        pseudo: the pseudo condition ``c_p`` of ``L_f``: ``next`` class ``(c_f + 1) mod C`` (upstream; with one
            forgotten class it never equals it, and the null class is never used), a uniformly ``random`` other class,
            a fixed ``class`` (``pseudo_class``), or for text models the fixed ``anchor_prompt`` (``prompt``) or each
            forget image's own prompt with the words of ``concept`` replaced by ``anchor_prompt`` (``replace``: style
            erasure, "an image of the digit 3 in inverted style" -> "an image of the digit 3").
        pseudo_class: the class name or index of ``pseudo="class"``.
        condition_dropout: probability of replacing a condition by the null condition in the minimised denoising
            losses (``train``, ``retrain`` and ``L_r``; not in ``ga``'s ascent): classifier-free guidance training,
            paper DDPM 0.1.
        denoising_reduction: how the denoising losses (``train``, ``retrain``, ``ga``, ``L_r``, saliency) reduce the
            squared error over a sample's elements: ``mean``, or ``sum`` as the upstream DDPM code does, where the
            paper's ``alpha = 1e-3`` was tuned (``L_f`` is a mean in both). The mean suits Stable Diffusion's
            ``alpha = 0.5``.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        saliency_ratio: ``salun``: fraction of the denoiser's weights to train.
        mask_path: ``salun``: load the mask from this file instead of computing it.
        save_mask_path: ``salun``: write the computed mask here (default: the run's ``mask.safetensors``).
        saliency_guidance: ``w`` of the classifier-free guided prediction ``(1 + w) * eps(x_t, c) - w * eps(x_t,
            null)`` in the saliency loss (``0``: one unguided pass). Default (``None``): the model's
            :attr:`default_saliency_guidance`: 2.0 class-conditional (the reference DDPM code's mask), 7.5
            text-to-image (docs/method.md, 'The weight saliency mask').
        gradient_checkpointing: recompute the denoiser's activations in the backward pass (less memory).
        ema_decay: keep an exponential moving average of the denoiser's weights (diffusers ``EMAModel``, with its
            warm-up ``min(ema_decay, (1 + n) / (10 + n))``), updated after every optimizer step and copied into the
            denoiser at the end of fit, so the saved model is the average. ``None``: the last weights.
        class_names: the data's class names, in label order (default: ``"0"``, ``"1"``, ...).
        forget_class: the forgotten class (name or index); required by every method but ``train``.
        image_shape: ``(C, H, W)`` of the data's images, checked against the images the model makes.

    Raises:
        ValueError: in ``__init__`` for bad arguments or components; in ``setup`` when the data do not fit the model.
        FileNotFoundError: a component directory lacks a part.
    """

    methods = METHODS  # method name -> DiffusionMethod class: those this model offers
    unet_class: type = UNet2DModel
    condition_key: str = "class"  # the batch entry holding each image's own condition
    default_guidance: float = 2.0  # sampling guidance w in (1 + w) * eps(c) - w * eps(null)
    # w of the saliency loss's prediction when not given (docs/method.md, 'The weight saliency mask')
    default_saliency_guidance: float = 0.0

    def __init__(
        self,
        method: Method = "salun",
        unet: Component = None,
        pretrained: Optional[str] = None,
        scheduler: Optional[dict[str, Any]] = None,
        alpha: float = 1e-3,
        pseudo: Pseudo = "next",
        pseudo_class: Optional[Union[int, str]] = None,
        condition_dropout: float = 0.1,
        denoising_reduction: Literal["mean", "sum"] = "mean",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        saliency_ratio: float = 0.5,
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        saliency_guidance: Optional[float] = None,
        gradient_checkpointing: bool = False,
        ema_decay: Optional[float] = None,
        class_names: Optional[list[str]] = None,
        forget_class: Optional[Union[int, str]] = None,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(self.methods)}.")
        if method not in self.methods:
            raise ValueError(
                f"method {method!r} erases a concept named by a text prompt: it needs a TextToImageDiffusion model; "
                f"{type(self).__name__} offers {', '.join(self.methods)}."
            )
        kind = METHODS[method]
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0 (the weight of L_r in L_f + alpha * L_r), got {alpha}; the paper "
                             "uses 1e-3 for DDPM and 0.5 for Stable Diffusion.")
        if pseudo not in Pseudo.__args__:
            raise ValueError(f"unknown pseudo {pseudo!r}; choose one of {', '.join(Pseudo.__args__)}.")
        if (pseudo == "class") != (pseudo_class is not None):
            raise ValueError("pseudo_class goes with pseudo='class' (a fixed pseudo class), and only with it.")
        if denoising_reduction not in ("mean", "sum"):
            raise ValueError(f"denoising_reduction must be 'mean' or 'sum', got {denoising_reduction!r}.")
        if not 0 <= condition_dropout < 1 or lr <= 0 or weight_decay < 0:
            raise ValueError("condition_dropout must be in [0, 1), lr positive and weight_decay non-negative.")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None (no average), got {ema_decay}; 0.999 is common.")
        if not 0 < saliency_ratio <= 1:
            raise ValueError(f"saliency_ratio must be in (0, 1], got {saliency_ratio}; the paper uses 0.5.")
        if saliency_guidance is not None and saliency_guidance < 0:
            raise ValueError(f"saliency_guidance must be >= 0 (0: unguided) or None (the model's default), got "
                             f"{saliency_guidance}.")
        if (mask_path or save_mask_path) and not kind.takes_mask:
            raise ValueError(f"mask_path and save_mask_path belong to method "
                             f"{method_names(lambda m: m.takes_mask, 'or', quoted=True)}, not {method!r}.")
        if kind.from_original and isinstance(unet, dict):
            raise ValueError(
                f"method {method!r} unlearns a trained denoiser but unet is a config dict (fresh weights): set unet to "
                "the directory a 'train' run wrote (<default_root_dir>/unet) or use pretrained."
            )
        self.save_hyperparameters()
        self.method = kind.from_arguments(self.hparams)
        self.saliency_guidance = self.default_saliency_guidance if saliency_guidance is None else saliency_guidance
        pretrained = resolve_pretrained(pretrained)
        self.pretrained_path = pretrained
        self.noise_scheduler = load_scheduler(scheduler, pretrained)
        self.unet = load_component(self.unet_class, "unet", unet, pretrained, fresh=not self.method.from_original)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.class_names: Optional[list[str]] = list(class_names) if class_names is not None else None
        self.num_classes: Optional[int] = len(self.class_names) if self.class_names is not None else None
        self.forget_class_index: Optional[int] = None
        self.pseudo_class_index: Optional[int] = None
        self.clock = FitClock()  # RTE: the minutes of the fit, across resumes (fit_minutes)
        self._saliency: Optional[WeightSaliencyCallback] = None  # salun's callback, once configured
        self._ema: Optional[EMAModel] = None
        self._ema_state: Optional[dict[str, Any]] = None  # from a checkpoint, loaded at fit start
        self._sharded = False  # the denoiser is sharded with FSDP2 (configure_model)
        self._whole_unet: Optional[dict[str, Tensor]] = None  # its gathered weights, on rank zero at the end of fit

    # ------------------------------------------------------------------------------------------------ conditioning
    @abstractmethod
    def to_model_space(self, images: Tensor) -> Tensor:
        """Map images in ``[-1, 1]`` to the denoiser's space (``x_0``)."""

    @abstractmethod
    def to_image_space(self, x0: Tensor) -> Tensor:
        """Map the denoiser's space back to images in (about) ``[-1, 1]``."""

    @abstractmethod
    def encode_condition(self, conditions: Conditions) -> Tensor:
        """The denoiser's conditioning tensor for a batch of raw conditions (labels or prompts)."""

    @abstractmethod
    def class_condition(self, classes: Tensor) -> Conditions:
        """The raw conditions naming ``classes``."""

    @abstractmethod
    def null_condition(self, count: int) -> Conditions:
        """``count`` unconditional (null) raw conditions."""

    @abstractmethod
    def denoise(self, x_t: Tensor, timesteps: Tensor, condition: Tensor) -> Tensor:
        """The denoiser's prediction (noise or velocity) for encoded conditions."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model makes and trains on."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of ``x_0`` in the denoiser's space."""
        side = _side(self.unet.config.sample_size)
        return (self.unet.config.in_channels, side, side)

    def frozen_modules(self) -> list[nn.Module]:
        """The parts that never train (kept in eval mode)."""
        return []

    # ------------------------------------------------------------------------------------------------ data
    @property
    def fit_minutes(self) -> Optional[float]:
        """RTE: the minutes of the last fit (a resumed one's earlier part included), or of the model loaded."""
        return self.clock.minutes

    @property
    def train_stream(self) -> str:
        """The training stream the datamodule should serve for this method."""
        return self.method.stream

    def _check_data(self) -> None:
        """Resolve the forgotten and pseudo classes and check the data's image shape (end of ``__init__``).

        Raises:
            ValueError: images of the wrong shape, no forgotten class for an unlearning method, a pseudo class equal
                to the forgotten one, or fewer than two classes.
        """
        hp, method = self.hparams, self.hparams.method
        if hp.forget_class is not None:
            if self.class_names is None:
                raise ValueError("forget_class needs class_names (the data's class names) to be resolved.")
            self.forget_class_index = resolve_class(hp.forget_class, self.class_names)
        if self.method.stream != "full" and self.forget_class_index is None:
            raise ValueError(f"method {method!r} needs a forgotten class: set forget_class (the data's forget_class).")
        if self.hparams.pseudo in ("next", "random") and self.num_classes is not None and self.num_classes < 2:
            raise ValueError("a pseudo class needs at least two classes; use another dataset or pseudo='prompt'.")
        if self.hparams.pseudo == "class":
            self.pseudo_class_index = resolve_class(self.hparams.pseudo_class, self.class_names)
            if self.pseudo_class_index == self.forget_class_index:
                raise ValueError(
                    f"pseudo_class {self.hparams.pseudo_class!r} is the forgotten class itself; pick another class "
                    "(or pseudo='next')."
                )
        if hp.image_shape is None:
            return
        shape = tuple(hp.image_shape)
        if shape != self.image_shape:
            channels, height, _ = self.image_shape
            raise ValueError(
                f"the data's images are {shape[0]}x{shape[1]}x{shape[2]} (CxHxW) but the model makes "
                f"{channels}x{height}x{height} images: set the data's image_size: {height} and channels: {channels} "
                "(or use a model built for these images)."
            )

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the callbacks' on_fit_start, so that the minutes include the saliency mask
            open_fit(self.trainer, self.hparams.method, self._saliency, self.clock)
            self.method.setup_fit(self)

    def run_inputs(self) -> dict[str, Optional[str]]:
        """The files this module reads during a fit (a fit refuses a run directory that holds one of them)."""
        unet = self.hparams.unet
        return {"pretrained": self.pretrained_path, "unet": unet if isinstance(unet, str) else None,
                "mask_path": self.hparams.mask_path}

    def check_outputs(self) -> None:
        """Refuse, before the run directory is touched, outputs that cannot be written (``save_mask_path``)."""
        check_mask_output(self.hparams.save_mask_path)

    # ------------------------------------------------------------------------------------------------ losses
    def _noised(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, t, target)`` for images: noise and timesteps drawn in that order from the global generator."""
        x0 = self.to_model_space(images)
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, timesteps)
        return x_t, timesteps, denoising_target(self.noise_scheduler, x0, noise, timesteps)

    def denoising_loss(self, batch: dict[str, Any], condition_dropout: float = 0.0) -> Tensor:
        """The standard loss ``||prediction(x_t, c) - target||^2`` with each image's own condition ``c``."""
        x_t, timesteps, target = self._noised(batch["image"])
        condition = self.encode_condition(batch[self.condition_key])
        if condition_dropout > 0:
            drop = torch.rand(len(condition), device=condition.device) < condition_dropout
            null = self.encode_condition(self.null_condition(1))
            condition = torch.where(drop.view(-1, *[1] * (condition.dim() - 1)), null, condition)
        return self._denoising_error(self.denoise(x_t, timesteps, condition), target)

    def _denoising_error(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Squared error, mean over the batch; over a sample's elements per ``denoising_reduction``."""
        error = (prediction.float() - target.float()).square()
        return error.mean() if self.hparams.denoising_reduction == "mean" else error.flatten(1).sum(1).mean()

    def pseudo_condition(self, batch: dict[str, Any]) -> Conditions:
        """The raw pseudo conditions ``c_p`` of a forget batch (see ``pseudo``)."""
        classes, pseudo = batch["class"], self.hparams.pseudo
        if pseudo == "next":
            pseudo_classes = (classes + 1) % self.num_classes
        elif pseudo == "random":
            pseudo_classes = random_other_labels(classes, self.num_classes)
        else:
            pseudo_classes = torch.full_like(classes, self.pseudo_class_index)
        return self.class_condition(pseudo_classes)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        """``L_f = ||eps(x_t, c_f) - stopgrad(eps(x_t, c_p))||^2`` on a forget batch."""
        x_t, timesteps, _ = self._noised(batch["image"])
        with torch.no_grad():
            target = self.denoise(x_t, timesteps, self.encode_condition(self.pseudo_condition(batch)))
        prediction = self.denoise(x_t, timesteps, self.encode_condition(batch[self.condition_key]))
        return F.mse_loss(prediction.float(), target.float())

    def guided_prediction(self, x_t: Tensor, timesteps: Tensor, condition: Tensor, guidance: float) -> Tensor:
        """Classifier-free guidance ``(1 + w) * eps(x_t, c) - w * eps(x_t, null)`` (``w = 0``: one plain pass)."""
        if guidance == 0:
            return self.denoise(x_t, timesteps, condition)
        null = self.encode_condition(self.null_condition(1)).expand_as(condition)
        both = self.denoise(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), torch.cat([condition, null]))
        conditional, unconditional = both.chunk(2)
        return (1 + guidance) * conditional - guidance * unconditional

    def saliency_loss(self, batch: dict[str, Any]) -> Tensor:
        """The loss the saliency mask ranks weights by (docs/method.md, 'The weight saliency mask'): the (guided)
        denoising loss on forget images with their forget condition, ``saliency_guidance`` being ``w``."""
        x_t, timesteps, target = self._noised(batch["image"])
        condition = self.encode_condition(batch[self.condition_key])
        prediction = self.guided_prediction(x_t, timesteps, condition, self.saliency_guidance)
        return self._denoising_error(prediction, target)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """The method's loss on a batch of its stream, logged as ``train/loss``."""
        loss = self.method.training_loss(self, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=count_images(batch.get("forget", batch)))
        return loss

    def configure_callbacks(self) -> list[Callback]:
        """The saliency callback for a method that takes the mask (in a fit), then the method's own callbacks."""
        callbacks = self.method.callbacks(self)
        if not self.method.takes_mask or (self._trainer is not None and self._trainer.state.fn != "fit"):
            return callbacks  # a test after the fit keeps the fit's saliency callback, which does nothing outside fit
        hp = self.hparams
        self._saliency = WeightSaliencyCallback(  # setup("fit") points it at the run directory's mask file
            ratio=hp.saliency_ratio,
            mask_path=hp.mask_path,
            save_mask_path=hp.save_mask_path,
            parameters=[r"^unet\."],
            batch_size_fn=count_images,
        )
        return [self._saliency, *callbacks]

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: shard the denoiser with FSDP2's ``fully_shard`` over the data-parallel
        ranks (each down, mid and up block, then the rest); nothing otherwise.

        Raises:
            ValueError: tensor parallelism, ``ema_decay``, or a method that needs the whole denoiser (``esd_x``,
                ``esd_u``: a frozen copy of it; ``fmn``: its attention processors).
        """
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ValueError("the diffusion modules shard the denoiser with FSDP2 only: use "
                             "ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1).")
        if not self.method.shardable or self.hparams.ema_decay is not None:
            what = f"method {self.hparams.method!r}" if self.hparams.ema_decay is None else "ema_decay"
            raise ValueError(f"{what} is not supported with a sharded denoiser (ModelParallelStrategy): use "
                             f"ddp, or {method_names(lambda m: m.shardable, 'or')} without ema_decay.")
        from torch.distributed.fsdp import fully_shard

        data_parallel = mesh["data_parallel"] if "data_parallel" in names else mesh
        blocks = [*getattr(self.unet, "down_blocks", []), getattr(self.unet, "mid_block", None),
                  *getattr(self.unet, "up_blocks", [])]
        for block in blocks:
            if block is not None:
                fully_shard(block, mesh=data_parallel)
        fully_shard(self.unet, mesh=data_parallel)
        self._sharded = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.unet.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def train(self, mode: bool = True) -> DiffusionUnlearningModule:
        """Set train/eval mode; the frozen parts stay in eval mode."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def on_fit_start(self) -> None:
        # diffusers' from_pretrained returns modules in eval mode, and Lightning keeps the mode it finds
        self.train()
        if self.hparams.ema_decay is not None:
            self._ema = EMAModel(self.unet.parameters(), decay=self.hparams.ema_decay, foreach=True)
            if self._ema_state is not None:
                self._ema.load_state_dict(self._ema_state)
        self.method.on_fit_start(self)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._ema is not None and self.trainer.global_step > self._ema.optimization_step:  # an optimizer step
            self._ema.step(self.unet.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fit_minutes"] = self.clock.checkpoint_minutes()
        if self._ema is not None:
            checkpoint["ema"] = self._ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._ema_state = checkpoint.get("ema")
        self.clock.restore(checkpoint.get("fit_minutes"))  # a resumed fit adds its own minutes to these (RTE)

    def on_fit_end(self) -> None:
        self.method.on_fit_end(self)
        if self._ema is not None:
            self._ema.copy_to(self.unet.parameters())
            self._ema = None
        self.clock.stop()
        if self._sharded and self.trainer.global_step > 0:  # every rank takes part in gathering the denoiser
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank zero only
            self._whole_unet = get_model_state_dict(self.unet, options=options)
        saved = self.trainer.global_step > 0  # e.g. `salun mask` takes no step, and saves nothing
        if self.trainer.is_global_zero and saved:
            root = Path(self.trainer.default_root_dir)
            self.save_components(root)
            record = {**self.run_record(), "fit_minutes": self.fit_minutes, "run_id": run_id_of(self.trainer)}
            write_json(root / RUN_FILENAME, record)
        close_run(self.trainer, finished=saved)
        self._whole_unet = None  # a gathered copy is only for this save

    def run_record(self) -> dict[str, Any]:
        """What ``run.json`` records of the run besides its minutes: the method, the forgotten class and what the
        method adds (e.g. the erased concept's prompt)."""
        return {"method": self.hparams.method, "forget_class": self.forget_class_index, **self.method.run_record(self)}

    def save_components(self, directory: Path) -> None:
        """Save the denoiser and the scheduler (and parts that exist nowhere else) as diffusers subfolders, so that
        ``directory`` can serve as ``pretrained`` of the next run."""
        if self._whole_unet is None:
            self.unet.save_pretrained(directory / "unet")
        else:  # the sharded denoiser's gathered weights, in the file and format save_pretrained writes
            (directory / "unet").mkdir(parents=True, exist_ok=True)
            self.unet.save_config(directory / "unet")  # it names the class fully_shard made: name the denoiser's
            config = json.loads((directory / "unet" / "config.json").read_text())
            write_json(directory / "unet" / "config.json", {**config, "_class_name": self.unet_class.__name__})
            save_file({name: value.contiguous() for name, value in self._whole_unet.items()},
                      str(directory / "unet" / SAFETENSORS_WEIGHTS_NAME))
        self.noise_scheduler.save_pretrained(directory / "scheduler")

    def load_unet(self, path: str) -> None:
        """Load the denoiser's weights (strictly) from a diffusers directory, e.g. the ``unet/`` a fit wrote."""
        saved = load_component(self.unet_class, "unet", path, None)
        self.unet.load_state_dict(saved.state_dict(), strict=True)


class ClassConditionalDiffusion(DiffusionUnlearningModule):
    """Pixel-space class-conditional DDPM (diffusers ``UNet2DModel``) with classifier-free guidance.

    The denoiser has ``num_class_embeds = num_classes + 1`` class embeddings, the last (index ``num_classes``) the
    null class; training drops conditions to it with probability ``condition_dropout`` (0.1), sampling guides with
    ``w = 2.0``, and so does the saliency loss by default (``saliency_guidance``; the reference DDPM code's mask).
    Methods: ``train``, ``retrain``, ``ga``, ``rl``, ``salun`` (the concept-erasure baselines need prompts).
    Other arguments: :class:`DiffusionUnlearningModule`.

    Args:
        num_classes: number of classes of the data (without the null class).

    Example::

        >>> unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
        ...         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
        ...         "layers_per_block": 1, "norm_num_groups": 4, "add_attention": False}
        >>> model = ClassConditionalDiffusion(method="train", unet=unet, num_classes=10)
        >>> model.unet.config.num_class_embeds, model.image_shape
        (11, (1, 8, 8))
    """

    methods = {name: kind for name, kind in METHODS.items() if not kind.erases_concept}
    default_saliency_guidance = 2.0  # the reference DDPM code's saliency loss guides as its sampler does

    def __init__(self, num_classes: int = 10, unet: Component = None, pseudo: Pseudo = "next", **kwargs: Any) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if pseudo in ("prompt", "replace"):
            raise ValueError("a class-conditional model has no prompts: use pseudo 'next', 'random' or 'class'.")
        if isinstance(unet, dict):
            given = unet.get("num_class_embeds")
            if given not in (None, num_classes + 1):
                raise ValueError(
                    f"unet num_class_embeds is {given} but num_classes={num_classes} needs {num_classes + 1} (the last "
                    "one the null class); remove num_class_embeds from the unet config."
                )
            unet = {**unet, "num_class_embeds": num_classes + 1}
        class_names = kwargs.pop("class_names", None)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}; give one name "
                             "per class (the data's).")
        class_names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
        super().__init__(unet=unet, pseudo=pseudo, class_names=class_names, **kwargs)
        if self.unet.config.num_class_embeds != num_classes + 1:
            raise ValueError(
                f"the unet has num_class_embeds={self.unet.config.num_class_embeds}, but num_classes={num_classes} "
                f"needs {num_classes + 1} (the classes plus the null class); set num_classes to match the model."
            )
        self._check_data()
        self.method.prepare(self)

    def to_model_space(self, images: Tensor) -> Tensor:
        return images

    def to_image_space(self, x0: Tensor) -> Tensor:
        return x0

    def encode_condition(self, conditions: Tensor) -> Tensor:
        return conditions.to(self.device)

    def class_condition(self, classes: Tensor) -> Tensor:
        return classes

    def null_condition(self, count: int) -> Tensor:
        return torch.full((count,), self.hparams.num_classes, dtype=torch.long, device=self.device)

    def denoise(self, x_t: Tensor, timesteps: Tensor, condition: Tensor) -> Tensor:
        return self.unet(x_t, timesteps, class_labels=condition).sample

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.latent_shape


class TextToImageDiffusion(DiffusionUnlearningModule):
    """Latent text-to-image diffusion (Stable Diffusion 1.x layout): VAE, CLIP text encoder, ``UNet2DConditionModel``.

    The VAE and the text encoder are frozen (no gradients, eval mode); only the denoiser trains. The empty prompt is
    the unconditional one. The saliency loss uses the guided prediction with ``saliency_guidance`` (default 7.5,
    docs/method.md, 'The weight saliency mask'); sampling guides with ``w = 6.5`` (diffusers' ``guidance_scale`` 7.5).
    Other arguments: :class:`DiffusionUnlearningModule` (``pretrained`` a Stable Diffusion checkout).

    Besides the methods of :class:`DiffusionUnlearningModule`, the concept-erasure baselines (docs/method.md,
    'Concept-erasure baselines') that erase the concept of ``concept_prompt`` (default: the forgotten class's
    prompt); their stream is ``forget``, which only sets the length of an epoch for ESD (it draws no images) and gives
    Forget-Me-Not its images:

    - ``esd_x`` and ``esd_u`` (ESD, Gandikota et al. 2023): the denoiser trained against a frozen copy of the
      original's negatively guided prediction, ``esd_x`` its cross-attention weights, ``esd_u`` the others
      (:mod:`~salun_lightning.diffusion.methods.esd`).
    - ``fmn`` (Forget-Me-Not attention re-steering, Zhang et al. 2023): the cross-attention on the concept's tokens
      lowered (:mod:`~salun_lightning.diffusion.methods.fmn`).

    Args:
        vae: ``AutoencoderKL``: a config dict, a directory, or ``None`` for ``<pretrained>/vae``.
        text_encoder: ``CLIPTextModel``: a config dict, a directory, or ``None`` for ``<pretrained>/text_encoder``.
        tokenizer: a ``CLIPTokenizer`` directory (``vocab.json`` and ``merges.txt``, or ``tokenizer.json``), or
            ``None`` for ``<pretrained>/tokenizer``.
        anchor_prompt: the pseudo condition of ``pseudo="prompt"`` (e.g. "a photo of a person wearing clothes"), or
            what replaces ``concept`` in the forget prompts with ``pseudo="replace"`` (``""``: the concept's words are
            dropped).
        class_prompts: the prompt of every class (the data's ``class_prompts``).
        concept_prompt: ``esd_x``, ``esd_u``, ``fmn``: the prompt naming the concept to erase (e.g. "nudity", "a photo
            of a nude person"); default: the forgotten class's prompt.
        concept: ``fmn``: the words of ``concept_prompt`` whose attention is lowered (e.g. "nude"); default: the
            forgotten class's name. ``pseudo="replace"`` (``salun``, ``rl``; required there): the words of every
            forget prompt that ``anchor_prompt`` replaces in its pseudo prompt (e.g. "in inverted style"), matched
            as whole words with any whitespace between them; a forget prompt without them is refused (ValueError
            naming the prompt and the concept) at the step it appears.
        esd_sampling_steps: ESD's DDIM steps from noise (ESD: 50).
        esd_sampling_guidance: ``w`` of ESD's sampling, ``(1 + w) * eps*(c) - w * eps*(null)``; 2.0 is ESD's
            guidance scale 3 (``scale = 1 + w``).
        esd_eta: ESD's negative guidance ``eta`` (paper: 1.0).
        esd_samples: latents ESD samples per step (ESD: 1).
        fmn_parameters: which denoiser weights ``fmn`` trains: ``all`` or ``cross_attention``.
        fmn_loss: ``mass`` or ``norm`` (:mod:`~salun_lightning.diffusion.methods.fmn`).

    Example::

        >>> import tempfile
        >>> tokenizer = Path(__file__).resolve().parents[2] / "configs" / "diffusion" / "tiny_clip_tokenizer"
        >>> parts = {  # Stable Diffusion's parts, in small
        ...     "unet": {"sample_size": 4, "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
        ...              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "cross_attention_dim": 16,
        ...              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 4},
        ...     "vae": {"block_out_channels": [8], "norm_num_groups": 4},
        ...     "text_encoder": {"vocab_size": 514, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...                      "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 512,
        ...                      "eos_token_id": 513, "pad_token_id": 513}}
        >>> checkout = Path(tempfile.mkdtemp())  # laid out as a Stable Diffusion checkout
        >>> TextToImageDiffusion(method="train", tokenizer=str(tokenizer), **parts).save_components(checkout)
        >>> sorted(path.name for path in checkout.iterdir())
        ['scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']
        >>> model = TextToImageDiffusion(method="salun", pretrained=str(checkout), alpha=0.5, lr=1e-5,
        ...                              class_names=["cat", "dog"], forget_class="cat",
        ...                              class_prompts=["a photo of a cat", "a photo of a dog"])
        >>> model.image_shape, model.encode_condition(["a photo of a dog"]).shape  # (1, tokens, hidden size)
        ((3, 4, 4), torch.Size([1, 32, 16]))
    """

    unet_class = UNet2DConditionModel
    condition_key = "prompt"
    default_guidance = 6.5  # diffusers' guidance_scale 7.5
    default_saliency_guidance = 7.5  # the mask from the concept prompt's guided loss

    def __init__(
        self,
        vae: Component = None,
        text_encoder: Component = None,
        tokenizer: Optional[str] = None,
        anchor_prompt: str = "",
        class_prompts: Optional[list[str]] = None,
        concept_prompt: Optional[str] = None,
        concept: Optional[str] = None,
        esd_sampling_steps: int = 50,
        esd_sampling_guidance: float = 2.0,
        esd_eta: float = 1.0,
        esd_samples: int = 1,
        fmn_parameters: Literal["all", "cross_attention"] = "all",
        fmn_loss: Literal["mass", "norm"] = "mass",
        **kwargs: Any,
    ) -> None:
        from transformers import CLIPTextModel

        method = kwargs.get("method", "salun")
        if method in METHODS:
            kind = METHODS[method]
            if concept_prompt is not None and not kind.erases_concept:
                raise ValueError(f"concept_prompt belongs to methods {method_names(lambda m: m.erases_concept, 'and')}"
                                 f", not {method!r}; the other methods take their prompts from the data (and "
                                 "anchor_prompt).")
            if concept is not None and not kind.uses_concept and kwargs.get("pseudo") != "replace":
                raise ValueError(f"concept (the words whose attention Forget-Me-Not lowers) belongs to method "
                                 f"{method_names(lambda m: m.uses_concept, 'or')}, not {method!r}, or to "
                                 f"pseudo='replace' (the words it replaces by anchor_prompt in the forget prompts), "
                                 f"not pseudo={kwargs.get('pseudo', 'next')!r}.")
        if concept is not None and not concept.strip():
            raise ValueError("concept is empty: give the words of concept_prompt to forget, e.g. 'nude'.")
        if kwargs.get("pseudo") == "replace":
            if concept is None:
                raise ValueError("pseudo='replace' replaces the words of concept in every forget prompt by "
                                 "anchor_prompt: set concept (e.g. 'in inverted style'; anchor_prompt '' drops them).")
            if " ".join(anchor_prompt.split()) == " ".join(concept.split()):
                raise ValueError(f"anchor_prompt {anchor_prompt!r} is the concept {concept!r} itself: the pseudo "
                                 "prompts would be the forget prompts; choose an anchor that does not show the concept.")
        if esd_sampling_steps < 1 or esd_samples < 1 or esd_eta < 0 or esd_sampling_guidance < 0:
            raise ValueError(
                f"esd_sampling_steps ({esd_sampling_steps}) and esd_samples ({esd_samples}) must be positive and "
                f"esd_eta ({esd_eta}) and esd_sampling_guidance ({esd_sampling_guidance}) non-negative; ESD uses 50, "
                "1, 1.0 and 2.0."
            )
        if fmn_parameters not in ("all", "cross_attention"):
            raise ValueError(f"fmn_parameters must be 'all' or 'cross_attention', got {fmn_parameters!r}.")
        if fmn_loss not in ("mass", "norm"):
            raise ValueError(f"fmn_loss must be 'mass' or 'norm', got {fmn_loss!r}.")
        super().__init__(**kwargs)
        pretrained = self.pretrained_path
        self.vae = load_component(AutoencoderKL, "vae", vae, pretrained)
        self.text_encoder = load_component(CLIPTextModel, "text_encoder", text_encoder, pretrained)
        self.tokenizer = load_tokenizer(tokenizer, pretrained)
        self.class_prompts = list(class_prompts or [])  # the prompts of the pseudo classes
        if class_prompts is not None and self.class_names is not None and len(class_prompts) != len(self.class_names):
            raise ValueError(f"class_prompts has {len(class_prompts)} prompts for {len(self.class_names)} classes; "
                             "give one prompt per class (the data's class_prompts).")
        for part in self.frozen_modules():
            part.requires_grad_(False).eval()
        check_text_to_image_parts(self.unet, self.vae, self.text_encoder, self.tokenizer)
        self._check_data()
        if self.hparams.pseudo not in ("prompt", "replace") and self.method.uses_pseudo and not self.class_prompts:
            raise ValueError(f"pseudo={self.hparams.pseudo!r} conditions on other classes' prompts: give class_prompts "
                             "(the data's), or use pseudo='prompt' with an anchor_prompt.")
        self._concept_pattern: Optional[re.Pattern[str]] = None
        if concept is not None:  # the concept's words, whole, with any whitespace between them (pseudo='replace')
            words = r"\s+".join(re.escape(word) for word in concept.split())
            self._concept_pattern = re.compile(rf"(?<!\w){words}(?!\w)")
        self.method.prepare(self)

    def _check_data(self) -> None:
        super()._check_data()
        if self.hparams.pseudo == "prompt" and self.forget_class_index is not None and self.class_prompts:
            if self.hparams.anchor_prompt.strip() == self.class_prompts[self.forget_class_index].strip():
                raise ValueError(
                    f"anchor_prompt {self.hparams.anchor_prompt!r} is the forgotten class's own prompt; choose an "
                    "anchor that does not show the class."
                )

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    # ------------------------------------------------------------------------------------------------ concept erasure
    # The concept-erasure methods' state and steps, read through the model.
    @property
    def concept_prompt(self) -> Optional[str]:
        """The prompt naming the erased concept (``None`` for a method that erases none)."""
        return getattr(self.method, "concept_prompt", None)

    @property
    def concept_positions(self) -> Optional[list[int]]:
        """Forget-Me-Not's token positions of ``concept`` in the concept prompt (``None`` for other methods)."""
        return getattr(self.method, "concept_positions", None)

    @property
    def original_denoiser(self) -> Optional[nn.Module]:
        """ESD's frozen copy ``eps*`` of the original denoiser (``None`` before the first fit's setup, or without
        ESD)."""
        return getattr(self.method, "original", None)

    @property
    def _attention(self) -> Optional[CrossAttentionRecorder]:
        """Forget-Me-Not's attention recorder (``None`` for other methods)."""
        return getattr(self.method, "recorder", None)

    def esd_sample(self, count: int) -> tuple[Tensor, Tensor]:
        """ESD's ``(x_t, t)`` (:meth:`~salun_lightning.diffusion.methods.Esd.sample`)."""
        return self.method.sample(self, count)

    def esd_target(self, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """ESD's target (:meth:`~salun_lightning.diffusion.methods.Esd.target`)."""
        return self.method.target(self, x_t, timesteps)

    def esd_loss(self, count: int = 1) -> Tensor:
        """ESD's loss on ``count`` latents (:meth:`~salun_lightning.diffusion.methods.Esd.loss`)."""
        return self.method.loss(self, count)

    def fmn_loss(self, batch: dict[str, Any]) -> Tensor:
        """Forget-Me-Not's loss on a forget batch (:class:`~salun_lightning.diffusion.methods.ForgetMeNot`)."""
        return self.method.training_loss(self, batch)

    def save_components(self, directory: Path) -> None:
        """Also save the tokenizer, and the VAE and text encoder unless they come from ``pretrained``: the directory
        then holds a whole pipeline."""
        super().save_components(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        for name in ("vae", "text_encoder"):
            if self.hparams[name] is not None:
                getattr(self, name).save_pretrained(directory / name)

    @property
    def _vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to_model_space(self, images: Tensor) -> Tensor:
        config = self.vae.config
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample()
        return (latents - (config.shift_factor or 0.0)) * config.scaling_factor

    def to_image_space(self, x0: Tensor) -> Tensor:
        config = self.vae.config
        return self.vae.decode(x0 / config.scaling_factor + (config.shift_factor or 0.0)).sample

    @property
    def prompt_length(self) -> int:
        """The number of tokens the text encoder sees (prompts padded or truncated to it)."""
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def encode_condition(self, conditions: list[str]) -> Tensor:
        ids = self.tokenizer(
            list(conditions), padding="max_length", max_length=self.prompt_length, truncation=True,
            return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0]

    def class_condition(self, classes: Tensor) -> list[str]:
        return [self.class_prompts[c] for c in classes.tolist()]

    def null_condition(self, count: int) -> list[str]:
        return [""] * count

    def pseudo_condition(self, batch: dict[str, Any]) -> list[str]:
        if self.hparams.pseudo == "prompt":
            return [self.hparams.anchor_prompt] * len(batch["image"])
        if self.hparams.pseudo == "replace":
            return [self.replace_concept(prompt) for prompt in batch[self.condition_key]]
        return super().pseudo_condition(batch)

    def replace_concept(self, prompt: str) -> str:
        """``pseudo="replace"``'s pseudo prompt: ``prompt`` with every occurrence of ``concept`` replaced by
        ``anchor_prompt``, whitespace normalised ("an image of the digit 3 in inverted style" -> "an image of the
        digit 3" for the concept "in inverted style" and the anchor "").

        Raises:
            ValueError: ``prompt`` does not contain ``concept`` (the message names both), or no ``concept`` is set.
        """
        if self._concept_pattern is None:
            raise ValueError("replace_concept needs concept (the words to replace); set it with pseudo='replace'.")
        replaced, count = self._concept_pattern.subn(lambda _: self.hparams.anchor_prompt, prompt)
        if count == 0:
            raise ValueError(
                f"the forget prompt {prompt!r} does not contain the concept {self.hparams.concept!r}, so "
                "pseudo='replace' has nothing to replace: every forget image's prompt must name the concept (fix the "
                "data's prompts, or the concept)."
            )
        return " ".join(replaced.split())

    def denoise(self, x_t: Tensor, timesteps: Tensor, condition: Tensor) -> Tensor:
        return self.unet(x_t, timesteps, encoder_hidden_states=condition).sample

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, side, _ = self.latent_shape
        return (self.vae.config.in_channels, side * self._vae_factor, side * self._vae_factor)

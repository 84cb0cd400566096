"""ESD (Gandikota et al. 2023, *Erasing Concepts from Diffusion Models*; paper: 1,000 steps, batch 1, Adam lr 1e-5):
the common part of ``esd_x`` and ``esd_u`` (docs/method.md, 'Concept-erasure baselines').

A frozen copy ``eps*`` of the original denoiser (made once, at the first fit's setup, before a checkpoint is
restored; never trained, never saved, not in the model's ``state_dict``) samples ``esd_samples`` latents from
Gaussian noise under the concept prompt with DDIM (``esd_sampling_steps``, guidance ``esd_sampling_guidance``),
stopping after a uniformly drawn number of steps ``k`` in ``[0, esd_sampling_steps)``: ``x_t`` at the DDIM timestep
``t`` that comes next. The target ``eps*(x_t, null) - esd_eta * (eps*(x_t, c) - eps*(x_t, null))`` carries no
gradient; the loss is ``mse(eps(x_t, c), target)``. ESD draws no training images. The weights not trained
(:attr:`Esd.trained`) get ``requires_grad=False`` and stay out of the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.diffusion.baselines import frozen_copy, select_trainable
from salun_lightning.diffusion.methods.concept import ConceptErasure
from salun_lightning.hyperparameters import Hyperparameters, fixed, tunable


@dataclass(frozen=True)
class EsdHyperparameters(Hyperparameters):
    """ESD's sampling and negative guidance (checked by :class:`~salun_lightning.diffusion.TextToImageDiffusion`)."""

    esd_sampling_steps: int = tunable(50, 10, 100, doc="DDIM steps from noise (ESD: 50)")
    esd_sampling_guidance: float = tunable(2.0, 0.0, 10.0, doc="w of the sampling's guidance (ESD's scale 3)")
    esd_eta: float = tunable(1.0, 0.1, 10.0, log=True, doc="the negative guidance of the target (paper: 1.0)")
    esd_samples: int = fixed(1, doc="latents sampled per step (ESD: 1)")


class Esd(ConceptErasure):
    """ESD's sampler, target and loss; a subclass says which denoiser weights train (:attr:`trained`)."""

    trained: ClassVar[Literal["cross_attention", "not_cross_attention"]]
    Hyperparameters = EsdHyperparameters

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._original: Optional[nn.Module] = None  # the frozen copy: on the method, not a submodule of the model

    @property
    def original(self) -> Optional[nn.Module]:
        """The frozen copy ``eps*`` of the original denoiser (``None`` before the first fit's setup)."""
        return self._original

    def prepare(self, module: Any) -> None:
        """Resolve the concept prompt and let only :attr:`trained` train.

        Raises:
            ValueError: see :meth:`ConceptErasure.prepare`; sampling steps beyond the noise schedule.
        """
        super().prepare(module)
        steps, total = self.hparams.esd_sampling_steps, module.noise_scheduler.config.num_train_timesteps
        if steps > total:
            raise ValueError(f"esd_sampling_steps {steps} exceeds the noise schedule's {total} timesteps; use at "
                             "most that (ESD: 50).")
        select_trainable(module.unet, self.trained)

    def setup_fit(self, module: Any) -> None:
        if self._original is None:  # before Lightning restores a checkpoint: the copy holds the original weights
            self._original = frozen_copy(module.unet)

    def on_fit_start(self, module: Any) -> None:
        if self._original is not None:
            self._original.to(module.device)

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return self.loss(module, self.hparams.esd_samples)

    def frozen(self, module: Any) -> nn.Module:
        """The frozen copy on the denoiser's device and dtype (made now if no fit has made it)."""
        if self._original is None:
            self._original = frozen_copy(module.unet)
        reference = next(module.unet.parameters())
        first = next(self._original.parameters())
        if (first.device, first.dtype) != (reference.device, reference.dtype):
            self._original.to(device=reference.device, dtype=reference.dtype)
        return self._original

    @staticmethod
    def generator(module: Any) -> Optional[torch.Generator]:
        """``None`` (the global generator) in one process; under several, a CPU generator seeded from the global
        seed, the rank and the step, so that the ranks sample different ``x_t`` (with one seed on every rank, the
        global generators would give every rank the same sample and the same gradient)."""
        if module._trainer is None or module.trainer.world_size == 1:
            return None
        seed = hash((torch.initial_seed(), module.global_rank, module.global_step)) % 2**63
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def sample(self, module: Any, count: int) -> tuple[Tensor, Tensor]:
        """ESD's ``(x_t, t)``: ``count`` latents sampled by the frozen copy with guided DDIM from Gaussian noise under
        the concept prompt, stopped after ``k`` steps, ``k`` drawn uniformly from ``[0, esd_sampling_steps)`` (then
        the noise, from the global generator); ``t`` is the DDIM timestep that would come next."""
        hp, original = self.hparams, self.frozen(module)
        scheduler = DDIMScheduler.from_config(module.noise_scheduler.config)
        scheduler.set_timesteps(hp.esd_sampling_steps)
        generator = self.generator(module)
        stop = int(torch.randint(0, hp.esd_sampling_steps, (), generator=generator))
        shape = (count, *module.latent_shape)
        device = module.device
        noise = torch.randn(shape, device=device) if generator is None else torch.randn(shape, generator=generator)
        x = noise.to(device) * scheduler.init_noise_sigma
        concept = module.encode_condition([self.concept_prompt] * count)
        both = torch.cat([concept, module.encode_condition(module.null_condition(count))])
        w = hp.esd_sampling_guidance
        for t in scheduler.timesteps[:stop]:
            timesteps = torch.full((2 * count,), int(t), dtype=torch.long, device=x.device)
            model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
            conditional, unconditional = original(model_input, timesteps, encoder_hidden_states=both).sample.chunk(2)
            prediction = (1 + w) * conditional - w * unconditional
            x = scheduler.step(prediction.float(), t, x, eta=0.0).prev_sample.to(x.dtype)
        t = int(scheduler.timesteps[stop])
        return x, torch.full((count,), t, dtype=torch.long, device=x.device)

    @torch.no_grad()
    def target(self, module: Any, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """ESD's target ``eps*(x_t, null) - esd_eta * (eps*(x_t, c) - eps*(x_t, null))`` from the frozen copy; it
        carries no gradient."""
        count = len(x_t)
        both = torch.cat([module.encode_condition([self.concept_prompt] * count),
                          module.encode_condition(module.null_condition(count))])
        predictions = self.frozen(module)(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]),
                                          encoder_hidden_states=both).sample
        conditional, unconditional = predictions.float().chunk(2)
        return unconditional - self.hparams.esd_eta * (conditional - unconditional)

    def loss(self, module: Any, count: int = 1) -> Tensor:
        """ESD's loss ``mse(eps(x_t, c), target)`` on ``count`` latents of :meth:`sample`."""
        x_t, timesteps = self.sample(module, count)
        target = self.target(module, x_t, timesteps)
        prediction = module.denoise(x_t, timesteps, module.encode_condition([self.concept_prompt] * count))
        return F.mse_loss(prediction.float(), target)

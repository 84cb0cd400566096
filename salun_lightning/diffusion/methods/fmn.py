"""``fmn``: Forget-Me-Not attention re-steering (Zhang et al. 2023; paper: 35 steps; docs/method.md,
'Concept-erasure baselines').

Forget images are noised as for training and denoised under the concept prompt while every cross-attention layer
records its attention probabilities at the token positions of ``concept`` (default: the forgotten class's name)
(:class:`~salun_lightning.diffusion.baselines.CrossAttentionRecorder`, installed for the fit and removed at its end,
also when the fit fails). ``fmn_loss="mass"``: per layer, the probabilities summed over the concept's tokens and
averaged over images, heads and pixels (the share of attention the concept receives), averaged over the layers;
``"norm"``: the reference code's L2 norm of all those probabilities together. ``fmn_parameters``: ``all`` (default,
the reference configuration ``only_optimize_ca: false``: the whole denoiser) or ``cross_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from lightning.pytorch import Callback
from torch import Tensor

from salun_lightning.diffusion.baselines import (
    CrossAttentionRecorder,
    RestoreAttentionOnError,
    concept_token_positions,
    select_trainable,
)
from salun_lightning.diffusion.methods.concept import ConceptErasure
from salun_lightning.hyperparameters import Hyperparameters, fixed


@dataclass(frozen=True)
class ForgetMeNotHyperparameters(Hyperparameters):
    """Forget-Me-Not's variants (checked by :class:`~salun_lightning.diffusion.TextToImageDiffusion`); its strength
    is the learning rate and the number of steps."""

    fmn_parameters: Literal["all", "cross_attention"] = fixed("all", doc="the denoiser weights trained")
    fmn_loss: Literal["mass", "norm"] = fixed("mass", doc="attention mass (default) or the reference code's norm")


class ForgetMeNot(ConceptErasure):
    """The attention the concept prompt's concept tokens receive, lowered on the forget images."""

    name = "fmn"
    uses_concept = True
    Hyperparameters = ForgetMeNotHyperparameters

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concept_positions: Optional[list[int]] = None  # the concept's token positions in the concept prompt
        self.recorder: Optional[CrossAttentionRecorder] = None

    def prepare(self, module: Any) -> None:
        """Resolve the concept prompt and the concept's tokens, choose the trained weights, make the recorder.

        Raises:
            ValueError: see :meth:`ConceptErasure.prepare`; no concept, or one not in the concept prompt.
        """
        super().prepare(module)
        concept = module.hparams.concept
        if concept is None:
            concept = module.class_names[module.forget_class_index].replace("_", " ") if (
                module.class_names is not None and module.forget_class_index is not None) else None
            if concept is None:
                raise ValueError(f"method {self.name!r} needs concept: the words of concept_prompt to forget, e.g. "
                                 "'nude'.")
        self.concept_positions = concept_token_positions(module.tokenizer, self.concept_prompt, concept,
                                                         module.prompt_length)
        select_trainable(module.unet, self.hparams.fmn_parameters)
        self.recorder = CrossAttentionRecorder(module.unet)

    def on_fit_start(self, module: Any) -> None:
        self.recorder.install()  # for the fit: a checkpointed backward recomputes with the same processors

    def on_fit_end(self, module: Any) -> None:
        self.recorder.restore()

    def callbacks(self, module: Any) -> list[Callback]:
        return [RestoreAttentionOnError(self.recorder)]

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        """The cross-attention on the concept's tokens when the forget images, noised as for training, are denoised
        under the concept prompt (see the module docstring)."""
        x_t, timesteps, _ = module._noised(batch["image"])
        condition = module.encode_condition([self.concept_prompt] * len(x_t))
        with self.recorder.capture(self.concept_positions):
            prediction = module.denoise(x_t, timesteps, condition)
        loss = self.recorder.attention_mass() if self.hparams.fmn_loss == "mass" else self.recorder.attention_norm()
        # every trained weight takes part in the graph (a zero gradient for those after the last cross-attention),
        # so that DDP finds no unused parameter
        return loss + 0.0 * prediction.float().mean()

    def run_record(self, module: Any) -> dict[str, Any]:
        return {**super().run_record(module), "concept_positions": self.concept_positions}

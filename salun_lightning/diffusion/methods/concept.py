"""The concept-erasure baselines' common part (docs/method.md, 'Concept-erasure baselines'): the prompt naming the
concept to erase, on a text-to-image model."""

from __future__ import annotations

from typing import Any, Optional

from salun_lightning.diffusion.methods.base import DiffusionMethod


class ConceptErasure(DiffusionMethod):
    """Erases the concept of ``concept_prompt`` (default: the forgotten class's prompt). The stream is ``forget``:
    it sets the length of an epoch (and gives the images to a method that uses them)."""

    stream = "forget"
    erases_concept = True
    shardable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concept_prompt: Optional[str] = None  # resolved by prepare

    def prepare(self, module: Any) -> None:
        """Resolve the concept prompt.

        Raises:
            ValueError: no concept prompt, an empty one, or an anchor equal to it.
        """
        hp = module.hparams
        prompt = hp.concept_prompt
        if prompt is None:
            if module.forget_class_index is None or not module.class_prompts:
                raise ValueError(f"method {self.name!r} erases the concept of concept_prompt: set concept_prompt (e.g. "
                                 "'a photo of a nude person'), or class_prompts and forget_class (the data's).")
            prompt = module.class_prompts[module.forget_class_index]
        if not prompt.strip():
            raise ValueError("concept_prompt is empty, the unconditional prompt: name the concept to erase.")
        if hp.anchor_prompt.strip() == prompt.strip():
            raise ValueError(f"anchor_prompt {hp.anchor_prompt!r} is the concept prompt {prompt!r} itself; choose an "
                             "anchor that does not show the concept.")
        self.concept_prompt = prompt

    def run_record(self, module: Any) -> dict[str, Any]:
        return {"concept_prompt": self.concept_prompt}

"""Parts of the concept-erasure baselines of :class:`~salun_lightning.diffusion.TextToImageDiffusion`
(docs/method.md, 'Concept-erasure baselines').

ESD (Gandikota et al. 2023) trains the denoiser against a frozen copy of itself (:func:`frozen_copy`) and trains
either its cross-attention weights (ESD-x) or the others (ESD-u) (:func:`cross_attention_parameter_names`).
Forget-Me-Not (Zhang et al. 2023) lowers the cross-attention probability mass on a concept's prompt tokens
(:func:`concept_token_positions`), read from every cross-attention layer by a :class:`CrossAttentionRecorder`.

Cross-attention layers are the diffusers ``Attention`` modules named ``attn2`` (in the transformer blocks of a
``UNet2DConditionModel``); ``attn1`` is self-attention.

Example::

    >>> from diffusers.models.attention_processor import Attention
    >>> layer = Attention(query_dim=8, cross_attention_dim=16, heads=2, dim_head=4)
    >>> unet = torch.nn.ModuleDict({"attn2": layer})  # a denoiser with one cross-attention layer
    >>> recorder = CrossAttentionRecorder(unet)
    >>> pixels, tokens = torch.randn(1, 6, 8), torch.randn(1, 5, 16)  # 6 queries, 5 prompt tokens
    >>> with recorder.capture([1, 2]):
    ...     out = layer(pixels, encoder_hidden_states=tokens)
    >>> recorder.captured[0].shape  # (batch x heads, queries, concept tokens)
    torch.Size([2, 6, 2])
    >>> 0 < float(recorder.attention_mass()) < 1  # the mean share of attention on tokens 1 and 2
    True
    >>> type(layer.processor).__name__  # the layer's own processor is back
    'AttnProcessor2_0'
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

CROSS_ATTENTION = "attn2"  # diffusers' name of the cross-attention module of a transformer block


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that never trains: its own tensors (no storage shared), no gradients, eval mode."""
    frozen = copy.deepcopy(module)
    frozen.requires_grad_(False)
    return frozen.eval()


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The cross-attention layers of a diffusers denoiser by module name: the ``Attention`` modules named ``attn2``.

    Raises:
        ValueError: the denoiser has none (no ``CrossAttn`` blocks).
    """
    from diffusers.models.attention_processor import Attention

    layers = {name: module for name, module in unet.named_modules()
              if name.rpartition(".")[2] == CROSS_ATTENTION and isinstance(module, Attention)}
    if not layers:
        raise ValueError(
            f"the denoiser ({type(unet).__name__}) has no cross-attention layers ({CROSS_ATTENTION}); use a "
            "UNet2DConditionModel with CrossAttn blocks (Stable Diffusion's layout)."
        )
    return layers


def cross_attention_parameter_names(unet: nn.Module) -> set[str]:
    """The names of the parameters of every cross-attention layer (``...attn2.to_q.weight``, ...) of ``unet``.

    Raises:
        ValueError: the denoiser has no cross-attention layers.
    """
    return {f"{layer}.{name}" for layer, module in cross_attention_layers(unet).items()
            for name, _ in module.named_parameters()}


def select_trainable(unet: nn.Module, train: Literal["all", "cross_attention", "not_cross_attention"]) -> set[str]:
    """Let only the chosen parameters of ``unet`` train (the others get ``requires_grad=False``); return their names.

    ``cross_attention``: the ``attn2`` layers' weights (ESD-x; Forget-Me-Not's ``only_optimize_ca``);
    ``not_cross_attention``: every other weight (ESD-u); ``all``: every weight.
    """
    if train not in ("all", "cross_attention", "not_cross_attention"):
        raise ValueError(f"unknown parameter selection {train!r}; choose all, cross_attention or not_cross_attention.")
    cross = cross_attention_parameter_names(unet) if train != "all" else set()
    trained = set()
    for name, param in unet.named_parameters():
        keep = train == "all" or (name in cross) == (train == "cross_attention")
        param.requires_grad_(keep)
        if keep:
            trained.add(name)
    return trained


def concept_token_positions(tokenizer: Any, prompt: str, concept: str, length: int) -> list[int]:
    """The token positions of every occurrence of ``concept`` in ``prompt`` as the text encoder sees it (padded and
    truncated to ``length`` tokens, start token at 0).

    Raises:
        ValueError: ``concept`` is empty or does not occur in ``prompt`` (as tokens, within ``length``).

    Example::

        >>> from pathlib import Path
        >>> from transformers import CLIPTokenizer
        >>> tokenizer = CLIPTokenizer.from_pretrained(
        ...     Path(__file__).resolve().parents[2] / "configs" / "diffusion" / "tiny_clip_tokenizer")
        >>> concept_token_positions(tokenizer, "a cat", "cat", 32)  # byte-level: <start> a c a t
        [2, 3, 4]
    """
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    wanted = tokenizer(concept, add_special_tokens=False).input_ids
    positions = sorted({i + k for i in range(len(ids) - len(wanted) + 1) if ids[i : i + len(wanted)] == wanted
                        for k in range(len(wanted))}) if wanted else []
    if not positions:
        raise ValueError(
            f"concept {concept!r} does not occur in concept_prompt {prompt!r} (compared as tokens, within the text "
            f"encoder's {length} tokens): set concept to words of the prompt, or change concept_prompt."
        )
    return positions


class _RecordingProcessor:
    """A diffusers attention processor computing attention the standard way (diffusers' ``AttnProcessor``) that
    hands the attention probabilities at the recorder's token positions to the recorder."""

    def __init__(self, recorder: CrossAttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, *args: Any,
                 **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch_size, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch x heads, queries, tokens)
        self.recorder.record(probs)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout
        if spatial:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CrossAttentionRecorder:
    """Records, in every cross-attention layer of a denoiser, the attention probabilities on chosen prompt tokens.

    :meth:`install` puts a recording processor (attention computed as diffusers' ``AttnProcessor`` does, with the
    probabilities materialised) into every ``attn2`` layer and :meth:`restore` puts the layers' own processors back;
    :meth:`capture` records one forward pass (installing and restoring around it unless already installed).
    :attr:`captured` then holds, per layer in forward order, the probabilities at the token positions,
    ``(batch x heads, queries, positions)``. Once positions are set, the processors slice them on every call, also
    in a gradient-checkpointing recomputation (which must repeat the forward's operations), but record only inside
    :meth:`capture`.
    """

    def __init__(self, unet: nn.Module) -> None:
        self.layers = cross_attention_layers(unet)
        normed = [name for name, layer in self.layers.items()
                  if getattr(layer, "norm_q", None) is not None or getattr(layer, "norm_k", None) is not None]
        if normed:
            raise ValueError(
                f"Forget-Me-Not records attention as Stable Diffusion 1.x/2.x computes it, without query/key "
                f"normalisation, but {len(normed)} cross-attention layers normalise queries or keys (e.g. "
                f"{normed[0]}); use a denoiser without qk_norm, or another method."
            )
        self.positions: Optional[list[int]] = None
        self.captured: list[Tensor] = []
        self.recording = False
        self._originals: dict[str, Any] = {}

    @property
    def installed(self) -> bool:
        """Whether the recording processors are in the layers."""
        return bool(self._originals)

    def install(self) -> None:
        """Put a recording processor into every cross-attention layer (keeping the layers' own)."""
        if self.installed:
            return
        for name, layer in self.layers.items():
            self._originals[name] = layer.processor
            layer.set_processor(_RecordingProcessor(self))

    def restore(self) -> None:
        """Give every cross-attention layer its own processor back."""
        for name, processor in self._originals.items():
            self.layers[name].set_processor(processor)
        self._originals.clear()

    def record(self, probs: Tensor) -> None:
        """Called by the processors with each layer's attention probabilities."""
        if self.positions is None:
            return
        index = torch.tensor(self.positions, device=probs.device)
        selected = probs.index_select(-1, index)
        if self.recording:
            self.captured.append(selected)

    @contextmanager
    def capture(self, positions: Sequence[int]) -> Iterator[list[Tensor]]:
        """Record the attention on ``positions`` during the block (``captured`` is emptied first)."""
        self.positions, self.captured, self.recording = list(positions), [], True
        installed_here = not self.installed
        self.install()
        try:
            yield self.captured
        finally:
            self.recording = False
            if installed_here:
                self.restore()

    def attention_mass(self) -> Tensor:
        """Forget-Me-Not's loss as written here: per layer, the attention mass on the positions (the probabilities
        summed over the positions), averaged over batch, heads and queries; then averaged over the layers. In
        ``[0, 1]``: the mean share of attention the concept's tokens receive."""
        self._check_captured()
        return torch.stack([probs.float().sum(-1).mean() for probs in self.captured]).mean()

    def attention_norm(self) -> Tensor:
        """The reference code's loss: the L2 norm of every captured probability of every layer, concatenated."""
        self._check_captured()
        return torch.cat([probs.float().flatten() for probs in self.captured]).norm()

    def _check_captured(self) -> None:
        if not self.captured:
            raise RuntimeError("no attention was captured: run the denoiser inside CrossAttentionRecorder.capture().")


class RestoreAttentionOnError(Callback):
    """Give the cross-attention layers their own processors back when a fit fails (Lightning calls
    ``on_exception`` on callbacks, not on the LightningModule)."""

    def __init__(self, recorder: CrossAttentionRecorder) -> None:
        self.recorder = recorder

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.recorder.restore()

"""Loading the parts of a diffusion model (docs/method.md, 'Diffusion unlearning'): denoiser, VAE, text encoder,
tokenizer and noise scheduler, each from a config dict, a diffusers-format directory, or a Hugging Face Hub id's
snapshot, with errors that name the missing or misfitting part.

Example::

    >>> import tempfile
    >>> from diffusers import UNet2DModel
    >>> unet = load_component(UNet2DModel, "unet", {"sample_size": 8, "block_out_channels": [8, 16],
    ...                       "down_block_types": ["DownBlock2D", "DownBlock2D"],
    ...                       "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4}, None)
    >>> checkout = Path(tempfile.mkdtemp())
    >>> unet.save_pretrained(checkout / "unet")
    >>> type(load_component(UNet2DModel, "unet", None, resolve_pretrained(str(checkout)))).__name__
    'UNet2DModel'
    >>> load_component(UNet2DModel, "vae", None, str(checkout))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: the vae is missing: .../vae holds no config.json. ...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

from diffusers import DDPMScheduler

Component = Optional[Union[str, dict[str, Any]]]  # a config dict, a directory, or None for <pretrained>/<name>
PREDICTION_TYPES = ("epsilon", "v_prediction")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
# What a diffusers pipeline needs from a Hub repository (not the multi-GB single-file checkpoints beside it).
HUB_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]


def check_prediction_type(scheduler: DDPMScheduler) -> str:
    """Return the scheduler's ``prediction_type``; raise ValueError unless it is ``epsilon`` or ``v_prediction``."""
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {kind!r} in the scheduler config; set it to one of {', '.join(PREDICTION_TYPES)}."
        )
    return kind


def load_scheduler(scheduler: Optional[dict[str, Any]], pretrained: Optional[str]) -> DDPMScheduler:
    """The noise schedule: ``scheduler`` (a ``DDPMScheduler`` config dict), else ``<pretrained>/scheduler``, else
    diffusers' defaults; its prediction type checked.

    Raises:
        FileNotFoundError: ``pretrained`` holds no ``scheduler/scheduler_config.json``.
        ValueError: a prediction type other than ``epsilon`` or ``v_prediction``.
    """
    if scheduler is None and pretrained is not None:
        if not (Path(pretrained, "scheduler", "scheduler_config.json")).is_file():
            raise FileNotFoundError(
                f"the scheduler is missing: {pretrained}/scheduler holds no scheduler_config.json; add it or "
                "give a scheduler config dict."
            )
        noise_scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler")
    else:
        noise_scheduler = DDPMScheduler.from_config(scheduler or {})
    check_prediction_type(noise_scheduler)
    return noise_scheduler


def load_component(kind: type, name: str, spec: Component, pretrained: Optional[str], fresh: bool = False) -> Any:
    """Build a diffusers or transformers model from a config dict, or load it from a diffusers-format directory.

    Args:
        kind: the model class (``UNet2DModel``, ``AutoencoderKL``, ``CLIPTextModel``, ...).
        name: the part's name, also its subfolder in ``pretrained`` (``unet``, ``vae``, ``text_encoder``).
        spec: a config dict (fresh weights), a directory holding the part (``config.json`` and weights), or ``None``
            for ``<pretrained>/<name>``.
        pretrained: a diffusers-format pipeline directory.
        fresh: take only the directory's config, with freshly initialised weights.

    Raises:
        ValueError: neither ``spec`` nor ``pretrained`` given.
        FileNotFoundError: the directory lacks the part (the message names it).
        ValueError: the directory's weights miss tensors of its config or have the wrong shapes.
    """
    if isinstance(spec, dict):
        return kind(kind.config_class(**spec)) if hasattr(kind, "config_class") else kind.from_config(spec)
    if spec is None and pretrained is None:
        raise ValueError(f"no {name}: give {name} (a config dict or a directory) or pretrained (diffusers directory).")
    path = Path(spec or Path(pretrained, name)).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the {name} is missing: {path} holds no config.json. Point {'pretrained' if spec is None else name} at "
            f"a diffusers-format directory (a Stable Diffusion checkout has {name}/ beside unet/, vae/, text_encoder/, "
            "tokenizer/ and scheduler/), or give a config dict."
        )
    if fresh:
        return kind.from_config(kind.load_config(path))
    model, info = kind.from_pretrained(path, output_loading_info=True)
    missing, mismatched = sorted(info["missing_keys"]), list(info["mismatched_keys"])
    if missing or mismatched:  # from_pretrained would initialise these at random and only warn
        raise ValueError(
            f"the {name} weights in {path} do not fit its config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(mismatched)} of the wrong shape (e.g. {mismatched[:3]}); save the {name} again."
        )
    return model


def load_tokenizer(tokenizer: Optional[str], pretrained: Optional[str]) -> Any:
    """A ``CLIPTokenizer`` from ``tokenizer`` (a directory), else from ``<pretrained>/tokenizer``.

    Raises:
        ValueError: neither given.
        FileNotFoundError: the directory holds no ``vocab.json`` or ``tokenizer.json``.
    """
    from transformers import CLIPTokenizer

    if tokenizer is None and pretrained is None:
        raise ValueError("no tokenizer: give tokenizer (a CLIPTokenizer directory) or pretrained.")
    tokenizer_path = Path(tokenizer or Path(pretrained, "tokenizer")).expanduser()
    if not any((tokenizer_path / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise FileNotFoundError(
            f"the tokenizer is missing: {tokenizer_path} holds no vocab.json or tokenizer.json; set tokenizer to a "
            "CLIPTokenizer directory (or pretrained to a Stable Diffusion checkout with tokenizer/)."
        )
    return CLIPTokenizer.from_pretrained(tokenizer_path)


def check_text_to_image_parts(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> None:
    """Refuse a denoiser, VAE, text encoder and tokenizer that do not fit together (the message lists each misfit).

    Raises:
        ValueError: latent channels, cross-attention width or vocabulary size disagree.
    """
    unet, vae, text = unet.config, vae.config, text_encoder.config
    problems = []
    if unet.in_channels != vae.latent_channels:
        problems.append(f"unet in_channels {unet.in_channels} != vae latent_channels {vae.latent_channels}")
    if isinstance(unet.cross_attention_dim, int) and unet.cross_attention_dim != text.hidden_size:
        problems.append(f"unet cross_attention_dim {unet.cross_attention_dim} != text encoder {text.hidden_size}")
    if text.vocab_size < len(tokenizer):
        problems.append(f"text encoder vocab_size {text.vocab_size} < tokenizer's {len(tokenizer)} tokens")
    if problems:
        raise ValueError("the components do not fit together: " + "; ".join(problems) + ". Use matching parts.")


def resolve_pretrained(pretrained: Optional[str]) -> Optional[str]:
    """The local directory of ``pretrained``: the directory itself, or a Hugging Face Hub id's snapshot.

    A Hub id (``owner/name``, e.g. ``CompVis/stable-diffusion-v1-4``) goes to ``huggingface_hub.snapshot_download``
    as diffusers' ``from_pretrained`` would (cached files are reused; new ones need the network).

    Raises:
        FileNotFoundError: ``pretrained`` is neither a directory nor a Hub id that could be fetched; the message says
            what failed and how to use a local directory instead.
    """
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or not HUB_ID.match(pretrained):
        raise FileNotFoundError(
            f"pretrained {pretrained!r} is not a directory: point it at a diffusers-format pipeline directory (with "
            "unet/, scheduler/, ...) or give a Hugging Face Hub id such as CompVis/stable-diffusion-v1-4."
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(pretrained, allow_patterns=HUB_PATTERNS)
    except Exception as error:  # offline, unknown or gated repository: all mean "not at hand"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"pretrained {pretrained!r}: no such local directory, and as a Hugging Face Hub id it could not be fetched "
            f"({reason}). Hub ids need the network (none is reachable here, or the id is wrong or gated): download "
            f"it where the Hub is reachable (huggingface-cli download {pretrained} --local-dir <dir>), copy <dir> here "
            "and set pretrained to that local directory."
        ) from None

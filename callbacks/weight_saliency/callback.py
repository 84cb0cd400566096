"""The callback: computes, loads or restores the mask at the start of fit and keeps non-salient weights frozen.

The maths lives in plain functions (:mod:`.selection`, :mod:`.masking`), mask files in :mod:`.mask_files` and what
several processes need in :mod:`.distributed`; :class:`WeightSaliencyCallback` orchestrates them in its hooks.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from .distributed import (
    check_sharding,
    collective_device,
    first_message,
    gather_shards,
    local_tensor,
    lockstep_batches,
    partition,
    shard_like,
)
from .mask_files import (
    PROVENANCE_KEYS,
    check_matches,
    check_provenance,
    load_mask,
    match_names,
    run_provenance,
    save_mask,
    writability_error,
)
from .masking import Partial, mask_gradients, restore_non_salient, sort_parameters
from .selection import saliency_mask

__all__ = ["SALIENCY_PRECISIONS", "LossFn", "WeightSaliencyCallback"]

LossFn = Callable[[LightningModule, Any], Tensor]

SALIENCY_PRECISIONS = ("float32", "trainer")
_NO_FORGET_DATA = (
    "WeightSaliencyCallback needs forget data: pass WeightSaliencyCallback(forget_dataloader=...) or give the "
    "Trainer a LightningDataModule with a forget_dataloader() method (or load a mask with mask_path=...)."
)


class WeightSaliencyCallback(Callback):
    """Train only the most salient weights: SalUn's weight saliency mask as a drop-in Lightning callback.

    At the start of fit the callback accumulates the gradient of a loss over the forget set (eval mode, summed
    over samples and across DDP ranks), keeps the top ``ratio`` fraction of weights by gradient magnitude, and from
    then on multiplies gradients by the mask after every backward pass. With ``freeze_non_salient`` (default), the
    non-salient elements are also restored to their starting values after every real optimizer step and their
    optimizer-state entries (momentum buffers, Adam moments) zeroed, so they never move.

    Sharded training (FSDP2): with ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`` and
    ``fully_shard`` applied in the module's ``configure_model``, every rank accumulates saliency on its own shards,
    the selection all-reduces histograms (:func:`saliency_mask` with a process group: the same mask as one process),
    and :attr:`mask`, the starting values and the masking stay per shard. :meth:`full_mask` gathers the whole mask
    (every rank must call it); mask files and checkpoints hold the whole mask, which loads back into the shards.
    ``FSDPStrategy`` (FSDP1's flat parameters) and DeepSpeed are refused.

    After the start of fit, :attr:`mask` holds the mask (parameter name to bool tensor) and :attr:`saliency_stats`
    where it came from (``source``: ``"forget set"``, ``"checkpoint"`` or ``"mask_path '<file>'"``), the kept count
    and fraction, overall and per parameter, and, when the mask was computed rather than loaded, the
    seconds of the saliency pass and of the selection (``saliency_seconds``, ``selection_seconds``).

    Args:
        ratio: fraction of the selected weights to train, in ``(0, 1]`` (paper: 0.5).
        forget_dataloader: the forget data. Default: ``trainer.datamodule.forget_dataloader()``.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar``, a batch-mean loss. Default: ``pl_module.saliency_loss(batch)``
            if the module has it, else the loss returned by ``pl_module.training_step(batch, batch_idx)``.
            With manual optimization, give ``loss_fn`` or ``saliency_loss``: ``training_step`` would step the optimizer.
        mask_path: load the mask from this file (safetensors written by ``save_mask_path``, or the upstream
            format) instead of computing it. Its recorded provenance must match the run: the forget set (when the
            run has forget data), ``ratio`` and the starting weights' hash; a file without provenance (upstream)
            is used with a warning. Names that differ from the selected parameters' by one prefix change (removing
            and adding one of ``""``, ``"module."``, ``"net."``, ``"model."``, ``"unet."``) are mapped.
        save_mask_path: write the mask here (safetensors) once it is known, with its provenance: ``forget_set``
            (``trainer.datamodule.forget_set_id`` when the forget data comes from a data module that has one, else
            :func:`batches_hash` of the whole forget loader), ``forget_set_description`` (from the data module,
            when it has one), ``ratio``, ``parameter_hash`` (:func:`parameter_hash` of the selected starting weights).
        freeze_non_salient: restore non-salient weights and zero their optimizer state after each step.
        parameters: regular expressions (``re.search``) selecting the parameters to rank; a parameter is selected
            when any of its names matches (tied parameters have several), and its mask is keyed by its first name.
            Every other trainable parameter is treated as non-salient. Default: all trainable parameters.
        batch_size_fn: ``batch_size_fn(batch) -> int``, the number of samples in a forget batch (each batch's mean
            loss is weighted by it). Default: Lightning's ``extract_batch_size`` (the first tensor's length).
        allow_mask_mismatch: use a ``mask_path`` file whose provenance differs from the run, with a warning naming
            the differences, instead of raising.
        saliency_precision: ``float32`` (default, as the reference code) runs the saliency pass with autocast off,
            whatever the Trainer's mixed precision (parameters stored in a lower precision, as under ``bf16-true``,
            are used as they are); ``trainer`` runs it under the Trainer's precision context, as training runs.

    Raises:
        ValueError: ``ratio`` outside ``(0, 1]``, an invalid regular expression or ``saliency_precision``; at the
            start of fit, a ``mask_path`` file that is not a readable mask, does not fit the selected parameters,
            or was made for another forget set, ratio or starting weights (without ``allow_mask_mismatch``).
        FileNotFoundError: at the start of fit, no file at ``mask_path``.
        MisconfigurationException: in ``setup``, an unsupported strategy or manual optimization without
            ``loss_fn`` or ``saliency_loss`` (and no ``mask_path``); at the mask's start (``on_fit_start``, under
            ``ModelParallelStrategy`` ``on_train_start``), before any step, no forget data when neither a checkpoint
            nor ``mask_path`` gives the mask (only then does Lightning say whether the fit resumes).

    Example::

        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from salun_lightning.callbacks import WeightSaliencyCallback
        >>> class Model(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, 3)
        ...     def training_step(self, batch, batch_idx):
        ...         inputs, labels = batch
        ...         return torch.nn.functional.cross_entropy(self.layer(inputs), labels)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> forget_loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
        >>> retain_loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(1, 3, (16,))), batch_size=4)
        >>> model = Model()
        >>> start = model.layer.weight.detach().clone()
        >>> saliency = WeightSaliencyCallback(ratio=0.5, forget_dataloader=forget_loader)
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[saliency], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model, retain_loader)  # only the salient half of the weights moves
        >>> mask = saliency.mask["layer.weight"]  # bool tensor, True where the weight was trained
        >>> mask.dtype, sum(int(m.sum()) for m in saliency.mask.values())  # half of the 12 weights and 3 biases
        (torch.bool, 7)
        >>> bool((model.layer.weight.detach() != start)[~mask].any())  # the others never moved
        False
    """

    def __init__(
        self,
        ratio: float = 0.5,
        forget_dataloader: Optional[DataLoader] = None,
        loss_fn: Optional[LossFn] = None,
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        freeze_non_salient: bool = True,
        parameters: Optional[Sequence[str]] = None,
        batch_size_fn: Optional[Callable[[Any], int]] = None,
        allow_mask_mismatch: bool = False,
        saliency_precision: str = "float32",
    ) -> None:
        super().__init__()
        if saliency_precision not in SALIENCY_PRECISIONS:
            raise ValueError(
                f"saliency_precision must be one of {', '.join(SALIENCY_PRECISIONS)}, got {saliency_precision!r}: "
                "'float32' (the reference code) or 'trainer' (the Trainer's precision, e.g. bf16 autocast)."
            )
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}; the paper keeps 0.5.")
        if isinstance(parameters, str):
            parameters = [parameters]
        patterns = []
        for pattern in parameters or []:
            try:
                patterns.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"parameters: {pattern!r} is not a valid regular expression ({error}).") from None
        self.ratio = float(ratio)
        self.forget_dataloader = forget_dataloader
        self.loss_fn = loss_fn
        self.mask_path = mask_path
        self.save_mask_path = save_mask_path
        self.freeze_non_salient = freeze_non_salient
        self.parameters = list(parameters) if parameters is not None else None
        self.batch_size_fn = batch_size_fn
        self.allow_mask_mismatch = allow_mask_mismatch
        self.saliency_precision = saliency_precision
        self._patterns = patterns
        self.mask: dict[str, Tensor] = {}
        self.saliency_stats: dict[str, Any] = {}
        self._restored_mask: Optional[dict[str, Tensor]] = None
        self._waiting_for_restore = False  # under a strategy that restores checkpoints after on_fit_start
        self._provenance: dict[str, str] = {}  # the mask's provenance entries, written to mask files
        self._partial: list[Partial] = []  # parameters with some salient elements
        self._frozen: list[Tensor] = []  # parameters with no salient element
        self._hook_handles: list[Any] = []
        self._sharded = False  # FSDP2: the selected parameters are DTensors, and mask holds this rank's shards
        self._sharded_params: dict[str, Tensor] = {}
        self._kept: dict[str, int] = {}  # salient elements per masked parameter, over all its shards
        self._seconds: dict[str, float] = {}  # the saliency pass's and the selection's, when the mask was computed

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(ratio=self.ratio, parameters=self.parameters)

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        supported = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy))
        if not supported or isinstance(trainer.strategy, DeepSpeedStrategy):  # DeepSpeed's class derives from DDP's
            raise MisconfigurationException(
                f"WeightSaliencyCallback supports single-device, DDP and ModelParallelStrategy (FSDP2) strategies, not "
                f"{type(trainer.strategy).__name__}: for sharded training apply FSDP2's fully_shard in the module's "
                "configure_model and use strategy=ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)"
                "; FSDPStrategy (FSDP1's flat parameters) and DeepSpeed are not supported."
            )
        if self.save_mask_path is not None:  # before the saliency pass, which can take long; every rank learns it
            error = writability_error(self.save_mask_path) if trainer.is_global_zero else None
            if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
                raise error or ValueError("rank zero cannot write save_mask_path; see its error.")
        has_loss = self.loss_fn is not None or callable(getattr(pl_module, "saliency_loss", None))
        if not (pl_module.automatic_optimization or has_loss or self.mask_path is not None):
            raise MisconfigurationException(
                f"{type(pl_module).__name__} uses manual optimization, so WeightSaliencyCallback cannot use its "
                "training_step as the saliency loss (it would step the optimizer on forget data): pass "
                "WeightSaliencyCallback(loss_fn=...) or define saliency_loss(batch) on the module."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Whether the fit resumes is known only once a checkpoint is restored (a checkpoint restores the mask, and
        # the missing forget data is an error only when it does not), which happens before this hook except under
        # strategies that restore after setting up the optimizers (ModelParallelStrategy): there, wait until training
        # starts (or, when no step runs, the end of fit).
        self._waiting_for_restore = trainer.strategy.restore_checkpoint_after_setup
        if not self._waiting_for_restore:
            self._start_masking(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._waiting_for_restore:  # the checkpoint's weights, optimizer state and mask are in place now
            self._start_masking(trainer, pl_module)

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        mask_gradients(self._partial, self._frozen, drop_frozen=self.freeze_non_salient)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._waiting_for_restore:  # no training step ran (max_steps already reached, or `salun mask`)
            self._start_masking(trainer, pl_module)
        self._remove_hooks()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        mask = {name: m.detach().cpu() for name, m in self.full_mask().items()}
        return {"mask": mask, "ratio": self.ratio, "provenance": dict(self._provenance)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("mask"):
            self._restored_mask = dict(state_dict["mask"])
            self._provenance = dict(state_dict.get("provenance", {"ratio": str(state_dict["ratio"])}))

    def full_mask(self) -> dict[str, Tensor]:
        """The whole mask of every selected parameter: :attr:`mask` itself, or under FSDP2 (where :attr:`mask`
        holds this rank's shard of each) gathered from all ranks; every rank must call it then."""
        if not self._sharded:
            return dict(self.mask)
        return {name: gather_shards(self.mask[name], self._sharded_params[name]) for name in self.mask}

    # ------------------------------------------------------------------------------------------------ the mask
    def _start_masking(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, load or restore the mask, keep the starting values and hook the optimizers."""
        self._waiting_for_restore = False
        selected = self._selected_parameters(pl_module)
        self._seconds = {}
        self._sharded = check_sharding(selected, trainer.world_size)
        if self._restored_mask is not None:
            mask, source = self._restored_mask, "checkpoint"
            check_matches(mask, selected, source)
            mask = {name: shard_like(mask[name], param) for name, param in selected.items()}
        elif self.mask_path is not None:
            mask, source = self._load_checked_mask(trainer, selected), f"mask_path {self.mask_path!r}"
            mask = {name: shard_like(mask[name], param) for name, param in selected.items()}
        else:
            group = torch.distributed.group.WORLD if self._sharded else None
            started = time.perf_counter()
            saliency = self.compute_saliency(trainer, pl_module, selected)  # ends with a host wait for the device
            self._seconds = {"saliency_seconds": time.perf_counter() - started}
            started = time.perf_counter()
            mask, source = saliency_mask(saliency, self.ratio, group=group), "forget set"
            self._seconds["selection_seconds"] = time.perf_counter() - started  # the selection waits twice too
            # hashes only for a mask file; of sharded weights on every rank (gathering them takes all ranks)
            writing = self._saving(trainer) or (self._sharded and self.save_mask_path is not None)
            self._provenance = self._run_provenance(trainer, selected, PROVENANCE_KEYS if writing else ())
        # this rank's part of every mask (all of it unless the parameters are sharded)
        self.mask = {name: mask[name].to(local_tensor(param).device, torch.bool) for name, param in selected.items()}
        self._restored_mask = None
        self._prepare_masking(pl_module)
        self._record_stats(trainer, pl_module, source)
        if self.save_mask_path is not None:
            full = self.full_mask()  # every rank takes part in gathering a sharded mask
            if self._saving(trainer):
                save_mask(self.save_mask_path, full, self._file_metadata(pl_module))
        trainer.strategy.barrier("weight_saliency_mask")
        if self.freeze_non_salient:
            for optimizer in trainer.optimizers:
                self._hook_handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    def _selected_parameters(self, pl_module: LightningModule) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by first name; selected when any of their names (tied ones have several) matches."""
        aliases: dict[int, list[str]] = {}
        trainable: dict[str, torch.nn.Parameter] = {}
        for name, param in pl_module.named_parameters(remove_duplicate=False):
            if param.requires_grad:
                aliases.setdefault(id(param), []).append(name)
                trainable.setdefault(aliases[id(param)][0], param)
        if not trainable:
            raise MisconfigurationException("the module has no trainable parameters to rank.")
        if not self._patterns:
            return trainable
        selected = {
            n: p for n, p in trainable.items() if any(pt.search(a) for a in aliases[id(p)] for pt in self._patterns)
        }
        if not selected:
            examples = ", ".join(list(trainable)[:5])
            raise MisconfigurationException(
                f"parameters={self.parameters} selects none of the {len(trainable)} trainable parameters "
                f"(for example: {examples}); patterns are matched with re.search against these names."
            )
        return selected

    def _load_checked_mask(self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter]) -> dict[str, Tensor]:
        """The ``mask_path`` file's mask keyed by the selected names, after checking its provenance."""
        try:
            mask, metadata = load_mask(self.mask_path)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"mask_path: {error}") from None
        mask = match_names(mask, selected, f"mask_path {self.mask_path!r}")
        run = self._run_provenance(trainer, selected, metadata)
        check_provenance(self.mask_path, metadata, run, self.allow_mask_mismatch)
        self._provenance = {key: metadata[key] for key in PROVENANCE_KEYS if key in metadata}
        return mask

    def _prepare_masking(self, pl_module: LightningModule) -> None:
        """Sort the parameters into frozen (no salient element on any rank) and partial ones (this rank's part)."""
        params = {name: p for name, p in pl_module.named_parameters() if p.requires_grad}
        self._sharded_params = {name: params[name] for name in self.mask} if self._sharded else {}
        self._kept = self._kept_counts()
        self._partial, self._frozen = sort_parameters(params, self.mask, self._kept, self.freeze_non_salient)

    def _kept_counts(self) -> dict[str, int]:
        """The salient elements of every masked parameter, over all its shards when it is sharded."""
        device = collective_device() if self._sharded else torch.device("cpu")
        counts = torch.tensor([int(mask.sum()) for mask in self.mask.values()], dtype=torch.int64, device=device)
        if self._sharded:
            torch.distributed.all_reduce(counts)
        return dict(zip(self.mask, counts.tolist()))

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Restore non-salient elements and zero their optimizer state; runs once per real optimizer step."""
        restore_non_salient(self._partial, optimizer.state)

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    # ------------------------------------------------------------------------------------------------ saliency
    def compute_saliency(
        self, trainer: Trainer, pl_module: LightningModule, selected: Mapping[str, torch.nn.Parameter]
    ) -> dict[str, Tensor]:
        """Return ``|sum over forget samples of grad loss|`` per selected parameter, summed across ranks.

        Under FSDP2 (parameters sharded as DTensors) each rank returns its shards' part, from the gradients that the
        backward pass reduce-scatters (averaged over ranks: the same ranking as the sum). Every forward and backward
        is then a collective, so the ranks go in lockstep: as many batches each as the rank with the most (the others
        repeat a batch with weight zero), and a bad batch size or loss on any rank stops all of them at that batch.
        On several processes every rank raises the error: its own, else the lowest failing rank's.
        """
        loader = self._partition(self._resolve_forget_dataloader(trainer), trainer)
        loss_fn, _ = self._resolve_loss(pl_module)
        params = list(selected.values())
        sharded = check_sharding(selected, trainer.world_size)
        sizes = [local_tensor(p).numel() for p in params]
        flat = torch.zeros(sum(sizes), dtype=torch.float32, device=local_tensor(params[0]).device)
        views = list(torch.split(flat, sizes))
        if sharded:
            pl_module.zero_grad(set_to_none=True)
        lockstep = sharded and trainer.world_size > 1
        collective = collective_device() if lockstep else flat.device
        whole = functools.partial(self._resolve_forget_dataloader, trainer)  # called only by a rank with no batch
        batches = lockstep_batches(loader, whole, collective) if lockstep else ((batch, 1) for batch in loader)
        samples, error = 0, None
        with torch.enable_grad(), _eval_mode(pl_module), _logging_disabled(pl_module):
            for batch_idx, (batch, weight) in enumerate(batches):
                batch = trainer.strategy.batch_to_device(batch)
                batch_size = self.batch_size_fn(batch) if self.batch_size_fn else extract_batch_size(batch)
                if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                    error = (f"batch_size_fn must return a positive int, got {batch_size!r} on forget batch "
                             f"{batch_idx} (rank {trainer.global_rank}).")
                if _stops(error is not None, trainer, lockstep):
                    break
                with self._precision_context(trainer, pl_module):
                    loss = loss_fn(batch, batch_idx)
                if not isinstance(loss, Tensor) or loss.numel() != 1 or not bool(torch.isfinite(loss.detach())):
                    error = (f"the saliency loss must be a finite scalar, got {_describe(loss)} on forget batch "
                             f"{batch_idx} (rank {trainer.global_rank}); check the forget data and loss_fn.")
                if _stops(error is not None, trainer, lockstep):
                    break
                if sharded:  # FSDP2 reduce-scatters the gradients into the shards' .grad
                    (loss.reshape(()) * (batch_size * weight)).backward()
                    grads = [None if p.grad is None else local_tensor(p.grad) for p in params]
                    pl_module.zero_grad(set_to_none=True)
                else:
                    grads = torch.autograd.grad(loss.reshape(()) * batch_size, params, allow_unused=True)
                for view, grad in zip(views, grads):
                    if grad is not None:
                        view.add_(grad.reshape(-1))
                samples += batch_size * weight
        status = torch.tensor([samples, int(error is not None)], dtype=torch.float64, device=collective)
        if trainer.world_size > 1:
            status = trainer.strategy.reduce(status, reduce_op="sum")
        if status[1] > 0:  # on every rank (the status is reduced), so every rank gathers the messages
            first = first_message(error) if trainer.world_size > 1 else error
            raise ValueError(error or first)
        if status[0] == 0:
            raise ValueError("the forget dataloader is empty: the saliency mask needs at least one forget sample.")
        if trainer.world_size > 1 and not sharded:
            torch.distributed.all_reduce(flat)
        pl_module.zero_grad(set_to_none=True)
        return {name: view.view_as(local_tensor(p)).abs_() for (name, p), view in zip(selected.items(), views)}

    def _precision_context(self, trainer: Trainer, pl_module: LightningModule) -> contextlib.AbstractContextManager:
        """The Trainer's precision context, or for ``float32`` one with autocast off (mixed precision disabled)."""
        if self.saliency_precision == "trainer":
            return trainer.precision_plugin.forward_context()
        return torch.autocast(device_type=pl_module.device.type, enabled=False)

    def _has_forget_data(self, trainer: Trainer) -> bool:
        return self.forget_dataloader is not None or callable(getattr(trainer.datamodule, "forget_dataloader", None))

    def _resolve_forget_dataloader(self, trainer: Trainer) -> DataLoader:
        if self.forget_dataloader is not None:
            return self.forget_dataloader
        if self._has_forget_data(trainer):
            return trainer.datamodule.forget_dataloader()
        raise MisconfigurationException(_NO_FORGET_DATA)

    def _partition(self, loader: DataLoader, trainer: Trainer) -> DataLoader:
        """Under several processes, the loader over this rank's portion of the forget set (disjoint, no padding)."""
        if trainer.world_size == 1:
            return loader
        return partition(loader, trainer.global_rank, trainer.world_size)

    def _resolve_loss(self, pl_module: LightningModule) -> tuple[Callable[[Any, int], Tensor], str]:
        """The saliency loss as ``loss(batch, batch_idx)``, and its name for mask files."""
        if self.loss_fn is not None:
            loss_fn = self.loss_fn
            return (lambda batch, idx: loss_fn(pl_module, batch)), getattr(loss_fn, "__qualname__", repr(loss_fn))
        if callable(getattr(pl_module, "saliency_loss", None)):
            return (lambda batch, idx: pl_module.saliency_loss(batch)), "saliency_loss"

        def training_step_loss(batch: Any, batch_idx: int) -> Tensor:
            output = pl_module.training_step(batch, batch_idx)
            return output["loss"] if isinstance(output, Mapping) else output

        return training_step_loss, "training_step"

    # ------------------------------------------------------------------------------------------------ reporting
    def _record_stats(self, trainer: Trainer, pl_module: LightningModule, source: str) -> None:
        kept = self._kept  # counted over all shards by _prepare_masking
        sizes = {name: (self._sharded_params[name] if self._sharded else m).numel() for name, m in self.mask.items()}
        total = sum(sizes.values())
        overall = sum(kept.values()) / total
        self.saliency_stats = {
            "source": source,
            "kept_fraction": overall,
            "kept": sum(kept.values()),
            "total": total,
            "per_parameter": {name: kept[name] / sizes[name] for name in self.mask},
            **self._seconds,
        }
        for logger in trainer.loggers:
            logger.log_metrics({"saliency/kept_fraction": overall}, step=trainer.global_step)
        frozen = sum(p.numel() for p in self._frozen)
        rank_zero_info(
            f"WeightSaliency: mask from {source}: training {sum(kept.values()):,} of {total:,} selected weights "
            f"({overall:.2%}) in {len(self.mask)} tensors; {len(self._frozen)} tensors fully frozen "
            f"({frozen:,} weights)."
        )

    # ------------------------------------------------------------------------------------------------ provenance
    def _saving(self, trainer: Trainer) -> bool:
        return self.save_mask_path is not None and trainer.is_global_zero

    def _file_metadata(self, pl_module: LightningModule) -> dict[str, Any]:
        _, loss_name = self._resolve_loss(pl_module)
        return {
            **self._provenance,
            "loss": loss_name if self.mask_path is None else f"loaded from {self.mask_path}",
            "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "parameters": ",".join(self.parameters or []),
        }

    def _run_provenance(
        self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter], keys: Collection[str]
    ) -> dict[str, str]:
        """This run's provenance for ``keys``: the forget set is the data module's ``forget_set_id`` when the forget
        data comes from a data module that has one, else a hash of the whole forget loader (not partitioned over
        ranks: the same on any number of processes)."""
        datamodule = trainer.datamodule if self.forget_dataloader is None else None
        loader = functools.partial(self._resolve_forget_dataloader, trainer) if self._has_forget_data(trainer) else None
        return run_provenance(self.ratio, selected, keys, datamodule, loader)


def _stops(failed: bool, trainer: Trainer, lockstep: bool) -> bool:
    """Whether the saliency pass stops here: ``failed`` on this rank or, in lockstep, on any rank (every rank
    reaches the reduction, whatever its own ``failed``)."""
    return trainer.strategy.reduce_boolean_decision(failed, all=False) if lockstep else failed


@contextlib.contextmanager
def _logging_disabled(module: LightningModule) -> Iterator[None]:
    """Let ``training_step`` run outside the loop: ``self.log`` calls become no-ops for the duration."""
    module.log = module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for every submodule, then each submodule's own train/eval flag restored."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def _describe(loss: Any) -> str:
    """A bad loss in an error message: its value, its shape, or its type."""
    if isinstance(loss, Tensor):
        return f"a tensor of shape {tuple(loss.shape)}" if loss.numel() != 1 else f"{loss.item()}"
    return f"{type(loss).__name__}"

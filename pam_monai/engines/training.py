"""The trainer's own handlers: the plan said at the start and the next commands at the end
(:class:`TrainingPlan`), the checks of the loss (:class:`IgnoredVoxelsCheck`,
:class:`NonFiniteLossGuard`), the step without waits for the GPU (:class:`DecollateKeepingLoss`,
:class:`Bf16WithoutLossScaling`), and the loss read every few iterations (:class:`EveryIterations`,
:func:`loss_of`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from .loaders import epoch_samples

__all__ = [
    "Bf16WithoutLossScaling",
    "DecollateKeepingLoss",
    "EveryIterations",
    "IgnoredVoxelsCheck",
    "NonFiniteLossGuard",
    "TrainingPlan",
    "loss_of",
]

log = logging.getLogger("pam_monai")


class IgnoredVoxelsCheck:
    """Refuse, before the first step, to train on a data set with unannotated voxels (nnU-Net's
    ``ignore`` label) with a loss that does not leave them out.

    Their targets hold :data:`pam_monai.data.ops.IGNORE` (2), which a plain Dice loss would take
    for a foreground of weight 2: a config whose ``loss`` was rewritten without
    ``pam_monai.networks.loss_for(..., ignore=True)`` would train on them silently. Checked once at
    ``STARTED`` (nothing per step).

    Args:
        ignore_label: the data set's ignore label value (``@spec.ignore_label``), None for fully
            annotated data (nothing to check).
    """

    def __init__(self, ignore_label: int | None = None) -> None:
        self.ignore_label = ignore_label

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.ignore_label is None:
            return
        from ..networks.polarity import IgnoredVoxelsLoss

        loss = getattr(engine, "loss_function", None)
        modules = loss.modules() if isinstance(loss, torch.nn.Module) else ()
        if not any(isinstance(m, IgnoredVoxelsLoss) for m in modules):
            raise ValueError(
                f"the data set marks unannotated voxels (dataset.json label 'ignore': {self.ignore_label}), "
                f"but the training loss {type(loss).__name__} does not leave them out and would learn "
                "them as foreground; build it with pam_monai.networks.loss_for(network, loss, ignore=True) "
                "(as the bundles' train.json does)"
            )


def _dropped(loader, per_epoch: int) -> str:
    """What ``drop_last`` leaves out of each epoch (of each rank's under ``torchrun``), for the plan."""
    samples, size = epoch_samples(loader), getattr(loader, "batch_size", None)
    if not getattr(loader, "drop_last", False) or samples is None or not size or samples <= per_epoch * size:
        return ""
    return (
        f" ({samples - per_epoch * size} slices of each epoch dropped: its incomplete last batch, drop_last)"
    )


#: inference.json ids whose training value means something else there (the training's eval/ folder
#: is not where masks go) or that name the training's own run
_NOT_FOR_INFERENCE = frozenset({"output_dir", "run_name", "handlers", "save_execute_config"})


def _next_overrides(configs: Path) -> tuple[str, str]:
    """This training's command-line overrides for the evaluation and the inference commands, each
    as `` --id value ...``: those of ids the command's configs have, as check_override_ids judges
    them (evaluation reads train.json too, so ``--epochs`` goes along; inference refuses it), less
    :data:`_NOT_FOR_INFERENCE` for inference. --tracking and its settings are the run's own."""
    from ..shell import quote
    from .workflow import _overrides_on_command_line

    pairs = _overrides_on_command_line()
    if not pairs:
        return "", ""
    evaluating = _config_has(configs / "train.json", configs / "evaluate.json")
    inferring = _config_has(configs / "inference.json")
    chosen = (
        [(k, v) for k, v in pairs if evaluating(k)],
        [(k, v) for k, v in pairs if inferring(k) and k.split("#")[0] not in _NOT_FOR_INFERENCE],
    )
    return tuple("".join(f" --{k} {quote(v)}" for k, v in kept) for kept in chosen)


def _config_has(*files: Path):
    """Whether the config ``files`` together have an id (nested ids too); outside a bundle's layout,
    the ids that surely mean the same in every bundle's config."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config([str(f) for f in files])
    except (OSError, ValueError):
        return {"bundle_root", "dataset_dir", "task", "ckpt_dir", "device"}.__contains__
    return parser.__contains__


class TrainingPlan:
    """Say at the start how much training the run holds: slices, optimiser steps per epoch and in
    all; a WARNING when real data gives fewer than ``min_steps`` steps (the paper's defaults, 80
    epochs at batch 50, suit BRATS' ~12,600 training slices per fold, ~20,000 steps; a small own data set gets a few
    hundred steps from them, and nnU-Net trains 250,000).

    At the end of a run to its last epoch it says what came of it and what to type next: the best
    model's path, epoch and score, and the evaluation and inference commands of this bundle.

    Args:
        synthetic: the data are a synthetic stand-in (no warning: a smoke run).
        min_steps: fewer optimiser steps than this on real data are warned about.
        ckpt_dir: the folder of ``model.pt`` and ``model.json`` (None: nothing said at the end).
    """

    def __init__(self, synthetic: bool = False, min_steps: int = 2000, ckpt_dir: str | None = None) -> None:
        self.synthetic = bool(synthetic)
        self.min_steps = int(min_steps)
        self.ckpt_dir = ckpt_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        if self.ckpt_dir is not None:
            engine.add_event_handler(Events.COMPLETED, self.finished)

    def finished(self, engine: Engine) -> None:
        """Log the best model and the next commands (process 0; not after a stop before the last epoch;
        only under ``python -m monai.bundle``: a program that trains, as the experiment runner, which
        evaluates the run itself, was told to type another bundle's commands, without the run's folder)."""
        from .checkpoint import _best_of
        from .workflow import _run_by_monai_bundle, _running_workflow_configs

        if not _run_by_monai_bundle():
            return
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        # Ctrl-C, SIGTERM (terminate(), in the last epoch too: Ignite still fires COMPLETED): not finished
        if engine.should_terminate or (engine.state.epoch or 0) < (engine.state.max_epochs or 0):
            return
        best = Path(self.ckpt_dir) / "model.pt"
        if not best.is_file():  # no validation ran
            return
        meta = best.with_suffix(".json")
        epoch = _best_of(json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {})
        configs = _running_workflow_configs() or Path("configs")
        evaluating, inferring = _next_overrides(configs)
        log.info(
            "training finished: best model %s%s. Next: evaluate it: python -m monai.bundle run evaluating "
            "--config_file \"['%s','%s']\"%s; segment new images: "
            "python -m monai.bundle run inferring --config_file %s --input_dir DIR%s",
            best, epoch, configs / "train.json", configs / "evaluate.json", evaluating, configs / "inference.json",
            inferring,
        )  # fmt: skip

    def __call__(self, engine: Engine) -> None:
        per_epoch, epochs = engine.state.epoch_length or 0, engine.state.max_epochs or 0
        loader = getattr(engine, "data_loader", None) or engine.state.dataloader  # MONAI's, Ignite's
        slices = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
        # under torchrun the steps are each process's: say how the slices are dealt to them
        replicas = getattr(getattr(loader, "sampler", None), "num_replicas", 1)
        shard = epoch_samples(loader) if isinstance(replicas, int) and replicas > 1 else None
        total = per_epoch * epochs
        log.info(
            "training: %s%d optimiser steps per epoch x %d epochs = %d%s",
            ""
            if slices is None
            else f"{slices:,} slices dealt to {replicas} processes ({shard:,} each per epoch), each "
            if shard is not None
            else f"{slices:,} slices, ",
            per_epoch,
            epochs,
            total,
            _dropped(loader, per_epoch),
        )
        if not self.synthetic and 0 < total < self.min_steps:
            log.warning(
                "training: only %d optimiser steps in all (%d per epoch x %d epochs): too few to train a network of "
                "this size well; raise --epochs (or lower --batch_size)",
                total,
                per_epoch,
                epochs,
            )


class EveryIterations:
    """An Ignite event filter for ``ITERATION_COMPLETED``: the first iteration of each epoch, every
    ``n``-th of the epoch and its last.

    The bundles' loss logging and NaN check read the loss through it (``log_every``): reading a
    CUDA tensor's value waits for the GPU, and once per iteration that leaves the GPU idle while
    the host prepares the next step; every ``n`` iterations costs one wait per ``n`` steps.
    """

    def __init__(self, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # 0 was silently taken as 1
            raise ValueError(f"EveryIterations: n must be a whole number of iterations, 1 or more, got {n!r}")
        self.n = n

    def __call__(self, engine: Engine, event_num: int | None = None) -> bool:
        length = engine.state.epoch_length or 0
        i = (engine.state.iteration - 1) % length + 1 if length else engine.state.iteration
        return i == 1 or i % self.n == 0 or i == length

    def __repr__(self) -> str:
        return f"EveryIterations({self.n})"


def loss_of(output):
    """The training loss in an Ignite trainer's output (detached): MONAI's dict, or the list of
    per-case dicts of a trainer that decollates (a loss handler's ``output_transform``)."""
    loss = (
        output[0]["loss"]
        if isinstance(output, list)
        else output.get("loss")
        if isinstance(output, dict)
        else output
    )
    return loss.detach() if isinstance(loss, torch.Tensor) else loss


class Bf16WithoutLossScaling:
    """Train bf16 autocast without the loss scaler MONAI's trainers make for any ``amp``.

    Loss scaling keeps float16's small gradients from underflowing; bfloat16 has float32's exponent
    range and needs none. Yet ``SupervisedTrainer(amp=True)`` steps through a
    ``torch.cuda.amp.GradScaler``: each step an inf/NaN pass over every gradient, a scale update
    and Python per parameter, and with an unfused optimizer an ``.item()`` of the inf check (the
    GPU idles until the step is done). On attach, a trainer whose ``amp_kwargs`` say bfloat16 gets a
    disabled scaler instead: autocast stays on, backward and ``optimizer.step()`` run unscaled (the
    same gradients: the scale is a power of two). A non-finite loss still stops the run
    (:class:`NonFiniteLossGuard`); float16 amp keeps its scaler.
    """

    def attach(self, engine: Engine) -> None:
        # MONAI's Trainer.run() makes a new scaler each run, before the run's STARTED event
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        dtype = (getattr(engine, "amp_kwargs", None) or {}).get("dtype")
        if getattr(engine, "scaler", None) is not None and dtype == torch.bfloat16:
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)


class DecollateKeepingLoss:
    """MONAI's decollation of a trainer's batch and output (``decollate=True``) without its read
    of the loss on the host after every step.

    MONAI's trainers turn their batch and output into lists of per-sample dicts after each step,
    and the 0-d loss into a Python float: on a GPU a wait for the step to finish, every step. The
    bundles' trainer runs with ``decollate=False`` and this handler instead: the same lists (MONAI's
    ``from_engine([...], first=True)`` handlers, e.g. ``--tracking mlflow``, work unchanged), with
    the loss kept a detached 0-d tensor in every item, read by the handlers that log it
    (``log_every``).
    """

    def __init__(self) -> None:
        from monai.transforms import Decollated

        self.decollate = Decollated(keys=None, detach=True)

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(engine.state.batch, (list, dict)):
            engine.state.batch = self.decollate(engine.state.batch)
        output = engine.state.output
        if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
            loss = output["loss"].detach()
            items = self.decollate({k: v for k, v in output.items() if k != "loss"})
            engine.state.output = [{**item, "loss": loss} for item in items]
        elif isinstance(output, (list, dict)):
            engine.state.output = self.decollate(output)


class NonFiniteLossGuard:
    """Stop training at the first non-finite loss, naming the epoch, iteration and batch.

    The run raises ``FloatingPointError`` before the optimiser's next step is checkpointed, so
    the last checkpoint on disk is the last good one.

    Args:
        check_every: read the loss on the host every ``check_every`` iterations (and at the end
            of each epoch, before the checkpoint), not after every step: in between, the first
            non-finite loss, its iteration and its batch's cases are kept on the device without
            waiting for it (:class:`EveryIterations`). 1 checks every iteration.
        loader: the training loader; its batch of the bad iteration is then named by its slices
            (:func:`~pam_monai.engines.loaders.batch_samples`, worked out from the sampler's
            order when the run stops: nothing per step). Without it, a batch is named only when
            it carries a ``case`` key.
    """

    def __init__(self, check_every: int = 1, loader=None) -> None:
        self.due = EveryIterations(check_every)
        self.loader = loader
        self._reset()

    def _reset(self) -> None:
        self._first = None  # iteration of the first non-finite loss (-1: none), on the loss's device
        self._value = None
        self._cases: dict[int, list] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        # attached before the checkpoint handlers: an epoch with a non-finite loss is never saved
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def __call__(self, engine: Engine) -> None:
        loss = loss_of(engine.state.output)
        loss = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        loss = loss.float().reshape(())
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), device=loss.device)
        new = torch.logical_and(~torch.isfinite(loss), self._first < 0)  # no host-device wait here
        self._first.masked_fill_(new, engine.state.iteration)
        self._value = torch.where(new, loss, self._value)
        batch = engine.state.batch
        if isinstance(batch, dict) and "case" in batch:
            self._cases[engine.state.iteration] = list(batch["case"])
        if self.due(engine):
            self.check(engine)

    def check(self, engine: Engine) -> None:
        if self._first is None:
            return
        first = self._first
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process checks at the same iterations: all stop together (a process that
            # stopped alone would leave the others waiting in their next gradient all-reduce)
            first = torch.where(first < 0, torch.iinfo(torch.long).max, first)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.long).max, -1, first)
        first, own, value, cases = int(first), int(self._first), float(self._value), self._cases
        self._reset()
        if first < 0:
            return
        length = engine.state.epoch_length or engine.state.iteration
        in_epoch = (first - 1) % length + 1
        # this process's batch of that iteration is named only when its own loss was the bad one
        named = ""
        if own == first and first in cases:
            named = f" (cases {cases[first]})"
        elif own == first and self.loader is not None:
            from .loaders import batch_samples

            samples = batch_samples(self.loader, in_epoch)
            named = f" (samples: {', '.join(samples)})" if samples else ""
        where = f"non-finite loss {value}" if own == first else "non-finite loss in another process"
        raise FloatingPointError(
            f"{where} at epoch {(first - 1) // length + 1}, iteration {first} "
            f"(batch {in_epoch} of the epoch){named}; the last good checkpoint is kept"
        )

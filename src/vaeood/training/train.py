"""Training: fit a VAE to a dataset and write a run directory.

Seeded and reproducible: the model is initialised from ``train.seed``, the data order
of epoch ``e`` is a permutation drawn from a generator seeded with (seed, e), and the
global RNG state (reparameterisation noise; every process's under torchrun) is saved
with every checkpoint, so a run resumed from its last checkpoint retraces the
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..infra.atomic import atomic_write_json, atomic_write_text, ensure_dir, remove_stale_temps
from .._reproducible import warn_if_not_reproducible
from ..infra import distributed
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .corruption import corrupt, noise_generator
from .config import PRECISIONS, Config, ConfigError, flatten
from ..data.folder_cache import CACHE_DIR
from ..data.load import load_for_run
from ..models import architecture_summary, build_model
from ..inference.objectives import load_objective_state, make_objective, objective_state
from ..infra.progress import bar as progress_bar, shown as progress_shown
from .run import MappedImages, resolve_device, to_tensor
from .run_dir import CONFIG_NAME, training_count
from ..infra.runlock import run_lock

CHECK_EVERY_GPU = 32  # steps between host reads of the non-finite-step counter on a GPU

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed NaN/inf for too many steps)."""


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) only (resumable)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class ObjectiveStep(torch.nn.Module):
    """The model and its objective as one module, so that DistributedDataParallel can
    wrap a ``forward`` that runs the whole loss (the objective calls ``posterior``,
    ``log_likelihood``, ... rather than the model's ``forward``)."""

    def __init__(self, model, objective, options: dict):
        super().__init__()
        self.model, self.objective, self.options = model, objective, options

    def forward(self, x, **kwargs):
        return self.objective(self.model, x, **self.options, **kwargs)


def train(config: Config, run_dir: str | Path, *, resume: bool = False, data_dir: str | None = None,
          progress: bool | None = None, given: Iterable[str] | None = None) -> Path:
    """Train ``config`` into ``run_dir`` (created); ``resume=True`` continues its checkpoint.

    Returns the run directory. ``data_dir`` is used when the config names none. The run
    directory is locked while training (:mod:`vaeood.infra.runlock`): a second writer is refused.

    Resuming is exact or refused: it continues the checkpoint with the config saved in
    it; a run killed before its first checkpoint starts again from its saved
    ``config.json``; a directory that does not exist or holds neither is refused.
    ``given`` names the settings the caller chose (dotted keys such as
    ``"model.latent_dim"``, e.g. a command line's overrides; None: all of ``config``).
    A given setting that differs from the saved config is refused when there is no
    checkpoint yet, and ignored with a warning naming it when there is one.
    """
    run_dir = Path(run_dir)
    config.validate()  # a config changed after it was made is checked again
    if resume and not run_dir.is_dir():
        raise TrainingError(f"cannot resume {run_dir}: no such directory; "
                            "train without --resume to start a new run there")
    distributed.setup(config.train.device)  # join the process group under torchrun
    warn_if_not_reproducible()
    ensure_dir(run_dir)
    with run_lock(run_dir, "train"):
        config, state = _resume_state(config, run_dir, resume, given)
        for folder in (run_dir, run_dir / CACHE_DIR) if distributed.is_main() else ():  # a killed write's leftovers
            remove_stale_temps(folder)
        atomic_write_json(run_dir / CONFIG_NAME, config.to_dict())
        return _fit(config, run_dir, state, data_dir, progress)


def resumable(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a run that ``train(..., resume=True)`` can continue."""
    return any((Path(run_dir) / name).exists() for name in (CHECKPOINT_NAME, CONFIG_NAME))


def _resume_state(config: Config, run_dir: Path, resume: bool, given) -> tuple[Config, dict | None]:
    """The config to train with and the checkpoint to continue (None: start afresh)."""
    ckpt_path = run_dir / CHECKPOINT_NAME
    exists = ckpt_path.exists()
    distributed.barrier()  # every rank looks before rank 0 writes anything
    if exists and not resume:
        raise FileExistsError(f"{run_dir} already holds a trained run; pass --resume to continue it "
                              "or choose another run directory")
    if not resume:
        return config, None
    if exists:
        state = load_checkpoint(ckpt_path)
        saved = Config.from_dict(state["config"], where=str(ckpt_path))
        differ = _differences(config, saved, given)
        if differ:
            log.warning("resuming with the config saved in %s; ignoring the settings that differ from it: %s",
                        ckpt_path, ", ".join(differ))
        log.info("resuming %s from epoch %d", run_dir, state["epoch"])
        return saved, state
    saved_path = run_dir / CONFIG_NAME
    if not saved_path.exists():
        raise TrainingError(f"cannot resume {run_dir}: it holds no checkpoint and no {CONFIG_NAME}, so "
                            "there is nothing to resume; train without --resume to start a run there")
    saved = Config.from_file(saved_path)
    differ = _differences(config, saved, given)
    if differ:
        raise ConfigError(f"cannot resume {run_dir}: it has no checkpoint yet and the given settings contradict "
                          f"its {saved_path}: {', '.join(differ)}. Leave them out to restart it as saved, "
                          "or train without --resume to start it afresh with them")
    log.info("nothing to resume in %s (no checkpoint: killed before its first epoch ended?); "
             "starting from scratch with its saved %s", run_dir, CONFIG_NAME)
    return saved, None


def _fit(config: Config, run_dir: Path, state: dict | None, data_dir: str | None, progress: bool | None) -> Path:
    """Train ``config`` from ``state`` (a checkpoint, or None) into ``run_dir``."""
    ckpt_path = run_dir / CHECKPOINT_NAME
    tcfg = config.train
    resolve_device(tcfg.device)
    device = distributed.setup(tcfg.device)  # cuda:LOCAL_RANK under torchrun
    data, x_all = _training_data(config, data_dir, device, run_dir)
    image_shape = tuple(x_all.shape[1:])
    run = _build_run(config, x_all, device, ckpt_path, progress)
    history, start_epoch, rng_restored = ([], 0, False) if state is None else \
        _restore(state, run.model, run.optimizer, run.objective, device)
    if history:  # a kill between a checkpoint and its metrics line leaves metrics.jsonl an epoch behind
        atomic_write_text(run_dir / "metrics.jsonl", _metrics_text(history))
    if run.world > 1 and not rng_restored:
        # different reparameterisation noise per rank; also when resuming a checkpoint saved
        # by another number of processes, whose per-rank states don't map onto these ranks
        torch.manual_seed(tcfg.seed + 104_729 * run.rank + start_epoch)
    bad_in_a_row = torch.zeros((), device=device)  # NaN/inf steps in a row, across epoch boundaries
    for epoch in range(start_epoch, tcfg.epochs):
        record = _train_epoch(run, epoch, bad_in_a_row)
        history.append(record)
        log.debug("epoch %d/%d: loss %.3f nats/image, %.0f images/s", epoch + 1, tcfg.epochs,
                  record["train_loss"], record["images_per_s"])
        save_run_state(ckpt_path, config, run.model, run.optimizer, epoch + 1, history, image_shape, data, device,
              objective=objective_state(run.objective))
        atomic_write_text(run_dir / "metrics.jsonl", _metrics_text(history))
    if history and start_epoch < tcfg.epochs:  # the stage's one line, with its result
        size = architecture_summary(run.model)
        log.info("trained %s: %d epoch%s on %d images of %s/%s, loss %.2f nats/image (%.0f s; %d parameters, "
                 "%d stride-2 stages)", run_dir, tcfg.epochs, "s" * (tcfg.epochs != 1), len(x_all), data.name,
                 data.split, history[-1]["train_loss"], sum(h["seconds"] for h in history[start_epoch:]),
                 size["num_parameters"], size["downsampling_stages"])
    return run_dir


def _training_data(config: Config, data_dir: str | None, device: torch.device, run_dir: Path):
    """The dataset and the images of it that training uses: on ``device``, or for a folder
    (decoded into ``RUN/cache/``) read from its memory-mapped file a batch at a time."""
    data = load_for_run(config.data, data_dir=config.data.data_dir or data_dir, run_dir=run_dir)
    images = data.images[: training_count(config.data, len(data.images))]
    patch = config.data.shuffle_patches
    if patch and (images.shape[1] % patch or images.shape[2] % patch):
        raise ConfigError(f"data.shuffle_patches = {patch}: must divide the image size "
                          f"{images.shape[1]}×{images.shape[2]} of {data.name}")
    x_all = MappedImages(images, device) if isinstance(images, np.memmap) else to_tensor(images, device)
    log.debug("training on %d images of %s/%s from %s", len(x_all), data.name, data.split, data.source)
    return data, x_all


@dataclass
class _Run:
    """What every epoch of one training run uses."""

    config: Config
    x_all: torch.Tensor
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: object
    step: object  # the objective step as it runs (DDP-wrapped, compiled)
    takes_index: bool
    autocast: object  # a context-manager factory
    show: bool
    check_every: int
    ckpt_path: Path


def _build_run(config: Config, x_all: torch.Tensor, device: torch.device, ckpt_path: Path,
               progress: bool | None) -> _Run:
    """The model, optimiser, objective and training step of a fresh run, with their settings."""
    tcfg = config.train
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = build_model(config.model, tuple(x_all.shape[1:])).to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # fused: one kernel per step on a GPU, and it can skip a step on the device (found_inf)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=True)
    # one per run: an objective may keep per-example state (MSC), saved with each checkpoint
    objective = make_objective(tcfg.objective, tcfg.objective_options, num_examples=len(x_all))
    takes_index = "index" in inspect.signature(objective).parameters  # per-example state (e.g. MSC)
    step = _wrap_step(ObjectiveStep(model, objective, tcfg.objective_options), tcfg, device, world)
    dtype = getattr(torch, PRECISIONS[tcfg.precision]) if PRECISIONS[tcfg.precision] else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    show = progress_shown(progress)
    # Reading a device flag on the host stalls a GPU's queue, so there the run of bad steps
    # is read every CHECK_EVERY_GPU steps (a bad step changes nothing, the stop just comes
    # a few steps later); on the CPU reading it is free and the check is exact.
    return _Run(config, x_all, device, rank, world, model, optimizer, objective, step, takes_index, autocast,
                show, check_interval(device), ckpt_path)


def _train_epoch(run: _Run, epoch: int, bad_in_a_row: torch.Tensor) -> dict:
    """One epoch of guarded steps; its record for ``metrics.jsonl`` (before the save)."""
    tcfg, n, device = run.config.train, len(run.x_all), run.device
    run.model.train()
    if hasattr(run.objective, "set_epoch"):  # epoch-scheduled objectives (elbo_warmup's KL warm-up)
        run.objective.set_epoch(epoch)
    order = epoch_order(n, tcfg.seed, epoch).to(device)
    dcfg = run.config.data
    noise = noise_generator(bool(dcfg.noise_rate or dcfg.shuffle_patches), tcfg.seed, epoch, run.rank, device)
    sums = GoodSums(device)  # logged values summed on the device over good steps; read once per epoch
    steps, skipped = 0, torch.zeros((), device=device)
    started = time.perf_counter()
    bar = progress_bar(range(0, n, tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                       enabled=run.show)
    for i in bar:
        index = order[i: i + tcfg.batch_size][run.rank::run.world]  # this rank's share of the global batch
        x = run.x_all[index] if noise is None else corrupt(run.x_all[index], dcfg.noise_rate, noise,
                                                            dcfg.shuffle_patches)
        out, bad = guarded_step(run.step, run.model, run.optimizer, x, {"index": index} if run.takes_index else {},
                                run.autocast, run.world)
        steps += 1
        skipped += bad
        bad_in_a_row.add_(1.0).mul_(bad)
        sums.add(out, bad)
        if steps % run.check_every == 0 or i + tcfg.batch_size >= n:
            _check_bad_run(bad_in_a_row, epoch, tcfg, run.ckpt_path)
        if run.show:
            bar.set_postfix(loss=f"{float(out['loss'].detach()):.2f}")
    skipped = int(skipped)
    good = steps - skipped
    seconds = time.perf_counter() - started
    if good == 0:
        raise TrainingError(f"no finite step in epoch {epoch + 1}; {_kept(run.ckpt_path)}. "
                            f"Lower train.lr (now {tcfg.lr}) or check the data")
    means = (distributed.all_reduce_sum(sums.sums) / (run.world * good)).tolist()
    return {"epoch": epoch + 1, **{f"train_{k}": v for k, v in zip(sums.keys, means, strict=True)},
            "skipped_steps": skipped, "seconds": seconds, "images_per_s": n / seconds}


def guarded_step(step, model, optimizer, x: torch.Tensor, kwargs: dict, autocast, world: int):
    """One training step that a NaN/inf loss or gradient turns into no update.

    Runs ``step(x, **kwargs)`` under ``autocast()``, backpropagates its ``"loss"`` and
    steps the fused Adam ``optimizer`` with ``found_inf`` set on the device, no host read.
    Returns the step's logged values and ``bad``: 1.0 where the update was skipped, else 0.0.
    """
    with autocast():
        out = step(x, **kwargs)
    optimizer.zero_grad(set_to_none=True)
    loss = out["loss"]
    loss.backward()  # even when NaN: under DDP every rank must join the gradient all-reduce
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    # the all-reduced gradient is the same on every rank, so all ranks skip alike (the
    # loss is per rank); loss + norm is finite iff both are, one kernel fewer per step
    bad = (~torch.isfinite(grad_norm if world > 1 else loss.detach() + grad_norm)).float()
    # Skip the update rather than let one bad batch poison the weights: fused Adam
    # leaves weights, moments and step count untouched where found_inf is 1.
    optimizer.found_inf = bad
    optimizer.step()
    return out, bad


class GoodSums:
    """A step's logged values summed on the device over the good (finite) steps."""

    def __init__(self, device: torch.device):
        self.device, self.keys, self.sums = device, None, None

    def add(self, out: dict, bad: torch.Tensor) -> None:
        if self.keys is None:
            self.keys = list(out)
            self.sums = torch.zeros(len(self.keys), device=self.device)
        values = torch.stack([out[k].detach().float() for k in self.keys])
        self.sums += torch.where(bad > 0, 0.0, values)


def _check_bad_run(bad_in_a_row: torch.Tensor, epoch: int, tcfg, ckpt_path: Path) -> None:
    """Stop training (a host read) once ``train.max_nonfinite_steps`` steps in a row were bad."""
    in_a_row = int(bad_in_a_row)
    if in_a_row >= tcfg.max_nonfinite_steps:
        raise TrainingError(
            f"loss or gradient was NaN/inf for {in_a_row} steps in a row at epoch {epoch + 1} "
            f"(train.max_nonfinite_steps = {tcfg.max_nonfinite_steps}); {_kept(ckpt_path)}. "
            f"Lower train.lr (now {tcfg.lr}) or check the data")


def _wrap_step(step: ObjectiveStep, tcfg, device: torch.device, world: int):
    """The training step as it runs: under DDP with several processes, compiled if asked."""
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
    if not tcfg.compile:
        return step
    mode = tcfg.compile_mode
    if world > 1 and mode == "reduce-overhead":  # CUDA graphs and DDP's gradient hooks don't mix
        log.info("train.compile_mode reduce-overhead (CUDA graphs) is for one process; using 'default' under torchrun")
        mode = "default"
    # the whole loss at once (encoder, decoder, likelihood, KL), so that the many small
    # elementwise kernels of the likelihood fuse; "reduce-overhead" adds CUDA graphs.
    # dynamic=False: the last, smaller batch of an epoch gets its own graph.
    return torch.compile(step, mode=mode, dynamic=False)


def _restore(state: dict, model, optimizer, objective, device: torch.device) -> tuple[list[dict], int, bool]:
    """Load a checkpoint's weights, optimiser, RNG and objective state; return its history,
    its epoch, and whether this process's own RNG state was restored."""
    rank, world = distributed.rank(), distributed.world_size()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # a checkpoint's saved flags must not undo fused=True
        group["fused"], group["foreach"] = True, None
    rng = state["rng"]
    per_rank = rng.get("ranks") or []
    rng_restored = world == 1 or len(per_rank) == world
    mine = per_rank[rank] if world > 1 and rng_restored else rng
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    load_objective_state(objective, state.get("objective"))
    return list(state["history"]), state["epoch"], rng_restored


def save_run_state(path, config, model, optimizer, epoch, history, image_shape, data, device, objective=None) -> None:
    """Write the checkpoint of ``epoch`` (weights, optimiser, RNG states, history) atomically;
    refuses NaN/inf weights so that the last good checkpoint survives."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"model weights became NaN/inf at epoch {epoch}; {_kept(path)}")
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if distributed.world_size() > 1:  # every rank's own noise state, so a resumed DDP run retraces
        rng = {**rng, "ranks": distributed.gather_objects(rng)}
    save_checkpoint(path, {
        "config": config.to_dict(),
        "epoch": epoch,
        "image_shape": list(image_shape),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "history": history,
        "objective": objective or {},  # per-example state of a stateful objective (MSC chains)
        **architecture_summary(model),  # num_parameters, downsampling_stages
        "train_data": {"name": data.name, "split": data.split, "source": data.source,
                       "is_sample": data.is_sample, "trained_range": [0, training_count(config.data, len(data.images))],
                       "split_size": len(data.images),
                       **({"folder": data.folder} if data.folder is not None else {})},
    })


def check_interval(device: torch.device) -> int:
    """Steps between host reads of the device's count of bad steps in a row."""
    return 1 if device.type == "cpu" else CHECK_EVERY_GPU


def _kept(ckpt_path: Path) -> str:
    """What a failed run leaves behind, for its error message."""
    return f"the last good checkpoint {ckpt_path} is kept unchanged" if ckpt_path.exists() else \
        f"no checkpoint was written to {ckpt_path.parent}"


def _differences(given: Config, saved: Config, keys: Iterable[str] | None) -> list[str]:
    """``key=given (saved: value)`` for each of ``keys`` (None: all) where the two configs differ."""
    flat_given, flat_saved = flatten(given.to_dict()), flatten(saved.to_dict())
    return [f"{k}={flat_given[k]!r} (saved: {flat_saved.get(k)!r})" for k in (flat_given if keys is None else keys)
            if flat_given[k] != flat_saved.get(k)]


def _metrics_text(history: list[dict]) -> str:
    """``metrics.jsonl``: one line per epoch of ``history`` (a non-finite number as null)."""
    return "".join(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in record.items()}) + "\n" for record in history)

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
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_json, atomic_write_text, ensure_dir, remove_stale_temps
from . import distributed
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import Config, ConfigError
from .data import load_dataset
from .models import build_model, count_parameters
from .objectives import load_objective_state, make_objective, objective_state
from .run import resolve_device, to_tensor

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
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
          progress: bool | None = None) -> Path:
    """Train ``config`` into ``run_dir`` (created); ``resume=True`` continues its checkpoint.

    Returns the run directory. ``data_dir`` is used when the config names none.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    distributed.setup(config.train.device)  # join the process group under torchrun
    state = None
    exists = ckpt_path.exists()
    distributed.barrier()  # every rank looks before rank 0 writes anything
    if exists:
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a trained run; pass --resume to continue it "
                                  "or choose another run directory")
        state = load_checkpoint(ckpt_path)
        saved = Config.from_dict(state["config"], where=str(ckpt_path))
        _warn_ignored_settings(config, saved, ckpt_path)
        config = saved
        log.info("resuming %s from epoch %d", run_dir, state["epoch"])
    elif resume and run_dir.exists():
        log.info("nothing to resume in %s (no checkpoint: killed before its first epoch ended?); "
                 "starting from scratch", run_dir)
    ensure_dir(run_dir)
    if distributed.is_main():
        remove_stale_temps(run_dir)  # left by a run killed while writing
    atomic_write_json(run_dir / "config.json", config.to_dict())

    tcfg = config.train
    if tcfg.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {tcfg.precision!r}")
    resolve_device(tcfg.device)
    device = distributed.setup(tcfg.device)  # cuda:LOCAL_RANK under torchrun
    rank, world = distributed.rank(), distributed.world_size()
    data = load_dataset(config.data.name, config.data.split, data_dir=config.data.data_dir or data_dir,
                        allow_sample=config.data.allow_sample)
    images = data.images[: config.data.limit] if config.data.limit else data.images
    x_all = to_tensor(images, device)
    image_shape = tuple(x_all.shape[1:])
    log.info("training on %d images of %s/%s from %s", len(x_all), data.name, data.split, data.source)

    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = build_model(config.model, image_shape).to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # fused: one kernel per step on a GPU, and it can skip a step on the device (found_inf)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, fused=True)
    # one per run: an objective may keep per-example state (MSC), saved with each checkpoint
    objective = make_objective(tcfg.objective, tcfg.objective_options, num_examples=len(x_all))
    takes_index = "index" in inspect.signature(objective).parameters  # per-example state (e.g. MSC)
    step = ObjectiveStep(model, objective, tcfg.objective_options)
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
    if tcfg.compile:
        if tcfg.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {tcfg.compile_mode!r}")
        mode = tcfg.compile_mode
        if world > 1 and mode == "reduce-overhead":  # CUDA graphs and DDP's gradient hooks don't mix
            log.info("train.compile_mode reduce-overhead (CUDA graphs) is for one process; using 'default' under torchrun")
            mode = "default"
        # the whole loss at once (encoder, decoder, likelihood, KL), so that the many small
        # elementwise kernels of the likelihood fuse; "reduce-overhead" adds CUDA graphs.
        # dynamic=False: the last, smaller batch of an epoch gets its own graph.
        step = torch.compile(step, mode=mode, dynamic=False)
    dtype = PRECISIONS[tcfg.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
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
        history = list(state["history"])
        start_epoch = state["epoch"]
        load_objective_state(objective, state.get("objective"))
    else:
        rng_restored = False
    if world > 1 and not rng_restored:
        # different reparameterisation noise per rank; also when resuming a checkpoint saved
        # by another number of processes, whose per-rank states don't map onto these ranks
        torch.manual_seed(tcfg.seed + 104_729 * rank + start_epoch)

    show = (sys.stderr.isatty() if progress is None else progress) and distributed.is_main()
    n = len(x_all)
    # Reading a device flag on the host stalls a GPU's queue, so there the run of bad steps
    # is read every CHECK_EVERY_GPU steps (a bad step changes nothing, the stop just comes
    # a few steps later); on the CPU reading it is free and the check is exact.
    check_every = _check_interval(device)
    bad_in_a_row = torch.zeros((), device=device)  # NaN/inf steps in a row, across epoch boundaries
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        if hasattr(objective, "set_epoch"):  # epoch-scheduled objectives (elbo_warmup's KL warm-up)
            objective.set_epoch(epoch)
        order = epoch_order(n, tcfg.seed, epoch).to(device)
        keys, sums = None, None  # logged values summed on the device over good steps; read once per epoch
        steps, skipped = 0, torch.zeros((), device=device)
        started = time.perf_counter()
        bar = tqdm(range(0, n, tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   disable=not show, leave=False)
        for i in bar:
            index = order[i: i + tcfg.batch_size][rank::world]  # this rank's share of the global batch
            with autocast():
                out = step(x_all[index], **({"index": index} if takes_index else {}))
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
            steps += 1
            skipped += bad
            bad_in_a_row.add_(1.0).mul_(bad)
            if keys is None:
                keys = list(out)
                sums = torch.zeros(len(keys), device=device)
            values = torch.stack([out[k].detach().float() for k in keys])
            sums += torch.where(bad > 0, 0.0, values)
            if steps % check_every == 0 or i + tcfg.batch_size >= n:
                in_a_row = int(bad_in_a_row)
                if in_a_row >= tcfg.max_nonfinite_steps:
                    raise TrainingError(
                        f"loss or gradient was NaN/inf for {in_a_row} steps in a row at epoch {epoch + 1} "
                        f"(train.max_nonfinite_steps = {tcfg.max_nonfinite_steps}); {_kept(ckpt_path)}. "
                        f"Lower train.lr (now {tcfg.lr}) or check the data")
            if show:
                bar.set_postfix(loss=f"{float(loss):.2f}")
        skipped = int(skipped)
        good = steps - skipped
        seconds = time.perf_counter() - started
        if good == 0:
            raise TrainingError(f"no finite step in epoch {epoch + 1}; {_kept(ckpt_path)}. "
                                f"Lower train.lr (now {tcfg.lr}) or check the data")
        means = (distributed.all_reduce_sum(sums) / (world * good)).tolist()
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in zip(keys, means)},
                  "skipped_steps": skipped, "seconds": seconds, "images_per_s": n / seconds}
        history.append(record)
        log.info("epoch %d/%d: loss %.3f nats/image, %.0f images/s", epoch + 1, tcfg.epochs,
                 record["train_loss"], record["images_per_s"])
        _save(ckpt_path, config, model, optimizer, epoch + 1, history, image_shape, data, device,
              objective=objective_state(objective))
        atomic_write_text(run_dir / "metrics.jsonl", "".join(_json_line(r) for r in history))
    return run_dir


def _save(path, config, model, optimizer, epoch, history, image_shape, data, device, objective=None) -> None:
    params = [p for p in model.parameters()]
    if not all(torch.isfinite(p).all() for p in params):
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
        "num_parameters": count_parameters(model),
        "train_data": {"name": data.name, "split": data.split, "source": data.source,
                       "is_sample": data.is_sample},
    })


def _check_interval(device: torch.device) -> int:
    """Steps between host reads of the device's count of bad steps in a row."""
    return 1 if device.type == "cpu" else CHECK_EVERY_GPU


def _kept(ckpt_path: Path) -> str:
    """What a failed run leaves behind, for its error message."""
    if ckpt_path.exists():
        return f"the last good checkpoint {ckpt_path} is kept unchanged"
    return f"no checkpoint was written to {ckpt_path.parent}"


def _warn_ignored_settings(given: Config, saved: Config, where: Path) -> None:
    """A resumed run continues with the config saved in its checkpoint; say which of
    the given settings differ from it (and are therefore not used)."""
    flat_given, flat_saved = _flatten(given.to_dict()), _flatten(saved.to_dict())
    differ = [f"{k}={flat_given[k]!r} (saved: {flat_saved.get(k)!r})" for k in flat_given
              if flat_given[k] != flat_saved.get(k)]
    if differ:
        log.warning("resuming with the config saved in %s; ignoring the settings that differ from it: %s",
                    where, ", ".join(differ))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("likelihood_options", "objective_options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _json_line(record: dict) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in record.items()}) + "\n"

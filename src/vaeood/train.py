"""Training: fit a VAE to a dataset and write a run directory.

Seeded and reproducible: the model is initialised from ``train.seed``, the data order
of epoch ``e`` is a permutation drawn from a generator seeded with (seed, e), and the
global RNG state (reparameterisation noise) is saved with every checkpoint, so a run
resumed from its last checkpoint retraces the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_json, atomic_write_text
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import Config
from .data import load_dataset
from .models import build_model, count_parameters
from .objectives import OBJECTIVES
from .run import resolve_device, to_tensor

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed NaN/inf for too many steps)."""


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) only (resumable)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train(config: Config, run_dir: str | Path, *, resume: bool = False, data_dir: str | None = None,
          progress: bool | None = None) -> Path:
    """Train ``config`` into ``run_dir`` (created); ``resume=True`` continues its checkpoint.

    Returns the run directory. ``data_dir`` is used when the config names none.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    state = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a trained run; pass --resume to continue it "
                                  "or choose another run directory")
        state = load_checkpoint(ckpt_path)
        config = Config.from_dict(state["config"], where=str(ckpt_path))
        log.info("resuming %s from epoch %d", run_dir, state["epoch"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.to_dict())

    tcfg = config.train
    device = resolve_device(tcfg.device)
    data = load_dataset(config.data.name, config.data.split, data_dir=config.data.data_dir or data_dir,
                        allow_sample=config.data.allow_sample)
    images = data.images[: config.data.limit] if config.data.limit else data.images
    x_all = to_tensor(images, device)
    image_shape = tuple(x_all.shape[1:])
    log.info("training on %d images of %s/%s from %s", len(x_all), data.name, data.split, data.source)

    torch.manual_seed(tcfg.seed)
    model = build_model(config.model, image_shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    objective = OBJECTIVES.get(tcfg.objective)
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        history = list(state["history"])
        start_epoch = state["epoch"]

    show = sys.stderr.isatty() if progress is None else progress
    n = len(x_all)
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        order = epoch_order(n, tcfg.seed, epoch).to(device)
        sums: dict[str, torch.Tensor] = {}  # summed on the device; read once per epoch (no per-step sync)
        steps = skipped = bad_in_a_row = 0
        started = time.perf_counter()
        bar = tqdm(range(0, n, tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   disable=not show, leave=False)
        for i in bar:
            x = x_all[order[i: i + tcfg.batch_size]]
            out = objective(model, x, **tcfg.objective_options)
            optimizer.zero_grad(set_to_none=True)
            loss = out["loss"]
            if torch.isfinite(loss):
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            if not torch.isfinite(loss) or not torch.isfinite(grad_norm):
                # Skip the update rather than let one bad batch poison the weights.
                skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= tcfg.max_nonfinite_steps:
                    raise TrainingError(
                        f"loss or gradient was NaN/inf for {bad_in_a_row} steps in a row at epoch {epoch + 1}; "
                        f"the last good checkpoint ({ckpt_path}) is untouched. Lower train.lr "
                        f"(now {tcfg.lr}) or check the data")
                continue
            bad_in_a_row = 0
            optimizer.step()
            steps += 1
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value.detach()
            if show:
                bar.set_postfix(loss=f"{float(loss):.2f}")
        seconds = time.perf_counter() - started
        if steps == 0:
            raise TrainingError(f"no finite step in epoch {epoch + 1}; nothing was saved over {ckpt_path}")
        record = {"epoch": epoch + 1, **{f"train_{k}": float(v) / steps for k, v in sums.items()},
                  "skipped_steps": skipped, "seconds": seconds, "images_per_s": n / seconds}
        history.append(record)
        log.info("epoch %d/%d: loss %.3f nats/image, %.0f images/s", epoch + 1, tcfg.epochs,
                 record["train_loss"], record["images_per_s"])
        _save(ckpt_path, config, model, optimizer, epoch + 1, history, image_shape, data, device)
        atomic_write_text(run_dir / "metrics.jsonl", "".join(_json_line(r) for r in history))
    return run_dir


def _save(path, config, model, optimizer, epoch, history, image_shape, data, device) -> None:
    params = [p for p in model.parameters()]
    if not all(torch.isfinite(p).all() for p in params):
        raise TrainingError(f"model weights became NaN/inf at epoch {epoch}; kept the previous checkpoint {path}")
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    save_checkpoint(path, {
        "config": config.to_dict(),
        "epoch": epoch,
        "image_shape": list(image_shape),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "history": history,
        "num_parameters": count_parameters(model),
        "train_data": {"name": data.name, "split": data.split, "source": data.source,
                       "is_sample": data.is_sample},
    })


def _json_line(record: dict) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in record.items()}) + "\n"

"""The one reuse rule of every reproduction (``vaeood reproduce``; docs/usage.md).

A model in ``OUT`` is reused only if its *recipe* equals what this call asks for: the
preset, the resolved training config (overrides, seed and device included), its training
data (each file's SHA-256, a folder's digest), the declaration that asked for it (a
companion model's overrides) and :data:`NUMBERS_REVISION`. The recipe is written to
``RUN/recipe.json`` before training starts, so a run interrupted at any point (Ctrl-C,
SIGTERM, kill -9) is resumed by the same command under the same rule.

Anything else is refused (:class:`StaleRunError`), naming the first difference, e.g.
``runs/fashion_mnist-seed0/main: model.latent_dim 16 → 4``, and the two ways out: another
``--out``, or ``--overwrite``, which retrains the runs that differ (saying which and why)
and reuses the rest. Feature caches are keyed by the checkpoint's digest and the data's,
so a retrained model never meets its predecessor's features.

A result (``metrics.json``, ``report.md``) is rewritten only where a number changed
(:func:`same_numbers`): a rerun with nothing changed leaves both as they were, bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..data.load import load_for_run
from ..infra.atomic import atomic_write, atomic_write_json, atomic_write_text, ensure_dir
from ..training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ..training.config import Config, ConfigError, flatten
from ..training.train import resumable, train

log = logging.getLogger(__name__)

#: raise it with any change to vaeood that makes the same recipe train to other weights: every
#: run recorded under an older revision is then refused (or retrained with ``--overwrite``)
NUMBERS_REVISION = 1
RECIPE_NAME = "recipe.json"
#: keys of a result that change from call to call with no number changing: when it was made,
#: how long it took, how loaded the machine was, and whether a model was trained or reused
VOLATILE = ("created", "timing", "load_average", "this_call", "images_per_s")


class StaleRunError(ConfigError):
    """A run in OUT was made by something other than what this call asks for."""


@dataclass
class Call:
    """One reproduction: its preset, whether it may retrain what differs, and every run it used."""

    preset: str | None = None
    overwrite: bool = False
    out_dir: Path | None = None
    runs: dict[str, dict] = field(default_factory=dict)  # run (relative to OUT) → digest and this call's part

    def name(self, run_dir: Path) -> str:
        if self.out_dir is not None and run_dir.resolve().is_relative_to(self.out_dir.resolve()):
            return str(run_dir.resolve().relative_to(self.out_dir.resolve()))
        return str(run_dir)


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("vaeood_reproduction", default=None)


@contextlib.contextmanager
def reproduction(out_dir: Path, preset: str, overwrite: bool = False):
    """The call every :func:`train_or_reuse` inside reports to (``with ... as call``)."""
    call = Call(preset, overwrite, Path(out_dir))
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)


def config_sha256(config: Config) -> str:
    """The SHA-256 of the resolved config (canonical JSON)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


def recipe(config: Config, data, preset: str | None, declared: dict | None = None) -> dict:
    """Everything that makes a trained model: see the module docstring. ``data``: its training
    :class:`~vaeood.data.imageset.ImageSet`."""
    files = {name: digest for name, digest in data.files}
    if data.folder is not None:
        files[f"{data.folder['name']}/"] = data.folder["sha256"]
    return {"preset": preset, "config": config.to_dict(), "data": {"source": data.source, "files": files},
            "declared": declared or {}, "numbers": NUMBERS_REVISION}


def differences(recorded: dict | None, wanted: dict) -> list[str]:
    """``"KEY OLD → NEW"`` for each difference of two recipes, the most telling first."""
    if recorded is None:
        return [f"it records nothing of what made it (no {RECIPE_NAME}: trained by `vaeood train` or an older "
                "vaeood)"]
    out = [f"preset {recorded.get('preset')} → {wanted['preset']}"] * (recorded.get("preset") != wanted["preset"])
    try:  # a key added to the config since then takes its default
        old = flatten(Config.from_dict(recorded.get("config") or {}).to_dict())
    except ConfigError as exc:
        return [*out, f"config not readable by this vaeood ({exc})"]
    new = flatten(wanted["config"])
    out += [f"{k} {_text(old.get(k))} → {_text(v)}" for k, v in new.items() if old.get(k) != v]
    old_files, new_files = (r.get("data", {}).get("files", {}) for r in (recorded, wanted))
    out += [f"training data {name}: sha256 {_short(old_files.get(name))} → {_short(new_files.get(name))}"
            for name in dict.fromkeys([*new_files, *old_files]) if old_files.get(name) != new_files.get(name)]
    if not old_files and not new_files and recorded.get("data") != wanted["data"]:
        out.append(f"training data {recorded.get('data', {}).get('source')} → {wanted['data']['source']}")
    if recorded.get("declared", {}) != wanted["declared"]:
        out.append(f"declared {recorded.get('declared')} → {wanted['declared']}")
    if recorded.get("numbers") != wanted["numbers"]:
        out.append(f"vaeood's numbers revision {recorded.get('numbers')} → {wanted['numbers']}")
    return out


def train_or_reuse(config: Config, run_dir: Path, *, data_dir: str | None, progress: bool | None,
                   declared: dict | None = None) -> dict:
    """Train ``config`` into ``run_dir``, resume it, or reuse it, by the rule of the module
    docstring; the training summary, with ``config_sha256``. ``declared``: the declaration
    that asked for this model (e.g. a detector's companion and its overrides)."""
    call = _CALL.get() or Call()
    run_dir = Path(run_dir)
    name = call.name(run_dir)
    data = load_for_run(config.data, data_dir=config.data.data_dir or data_dir)
    wanted = recipe(config, data, call.preset, declared)
    started = resumable(run_dir)
    if started:
        differ = differences(_read_recipe(run_dir), wanted)
        if differ and not call.overwrite:
            more = f" (and {len(differ) - 1} more difference{'s' * (len(differ) > 2)})" if len(differ) > 1 else ""
            raise StaleRunError(
                f"{name} was made by another call than this one: {differ[0]}{more}. Reusing it would report numbers "
                "of a model this command did not ask for. Give another --out to keep both, or pass --overwrite to "
                "retrain the runs that differ")
        if differ:
            log.warning("retraining %s: %s", name, "; ".join(differ))
            shutil.rmtree(run_dir)
            started = False
    if not started:
        ensure_dir(run_dir)
        atomic_write_json(run_dir / RECIPE_NAME, wanted)
    ckpt = run_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt) if ckpt.exists() else None
    if state is None or state["epoch"] < config.train.epochs:
        part = "trained" if state is None else "resumed"
        train(config, run_dir, resume=started, data_dir=data_dir, progress=progress)
        state = load_checkpoint(ckpt)
    else:
        part = "reused"
        log.info("reusing %s: trained already by the same recipe (%d epochs)", name, state["epoch"])
    digest = config_sha256(config)
    call.runs[name] = {"config_sha256": digest, "this_call": part}
    return {**training_summary(state), "config_sha256": digest}


def training_summary(state: dict) -> dict:
    """What a report says of a finished run's training, from its checkpoint."""
    return {"epochs": state["epoch"], "num_parameters": state["num_parameters"],
            "final_train_loss_nats": state["history"][-1]["train_loss"],
            "train_seconds": sum(h["seconds"] for h in state["history"]),
            "train_data": state["train_data"], "config": state["config"]}


def refuse_own_keys(experiment: str, own_keys: tuple[str, ...], overrides: dict | None) -> None:
    """An override of a key the experiment sets itself for each run would be ignored or would
    break what it compares: refused by name."""
    own = [k for k in overrides or {} if k in own_keys]
    if own:
        raise ConfigError(f"{experiment} sets {own[0]} itself for each run it trains, so --{own[0]} is refused; "
                          f"{experiment} takes overrides of every key but {', '.join(own_keys)}")


def record_runs(out_dir: Path, call: Call) -> None:
    """Add the runs of this call to ``metrics.json`` (``runs_used``) and a section to ``report.md``:
    each model's config digest and whether this call trained, resumed or reused it."""
    metrics, report = out_dir / "metrics.json", out_dir / "report.md"
    if metrics.is_file():
        atomic_write_json(metrics, {**json.loads(metrics.read_text()), "runs_used": call.runs})
    if report.is_file() and call.runs:
        rows = "".join(f"| {name} | `{r['config_sha256'][:12]}` | {r['this_call']} |\n"
                       for name, r in call.runs.items())
        atomic_write_text(report, report.read_text().rstrip("\n") + "\n\n## Set-up: the models of this call\n\n"
                          "Each model's resolved config (its SHA-256, first 12 digits) and whether this call trained "
                          "it, resumed an interrupted run or reused a finished one (the reuse rule: docs/usage.md)."
                          "\n\n| model | config SHA-256 | this call |\n|---|---|---|\n" + rows)


def same_numbers(a, b) -> bool:
    """Two results equal in every value but the :data:`VOLATILE` ones and the times (keys naming seconds)."""
    return _numbers(a) == _numbers(b)


def _numbers(value):
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if k not in VOLATILE and "seconds" not in k}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def read_result(out_dir: Path) -> dict[str, bytes] | None:
    """The bytes of ``metrics.json`` and ``report.md`` in ``out_dir`` (None where either is missing)."""
    files = {name: out_dir / name for name in ("metrics.json", "report.md")}
    return {n: p.read_bytes() for n, p in files.items()} if all(p.is_file() for p in files.values()) else None


def keep_if_unchanged(out_dir: Path, before: dict[str, bytes] | None) -> bool:
    """Put back the result of the last call where every number equals this call's; True if so."""
    if before is None or not (out_dir / "metrics.json").is_file():
        return False
    if not same_numbers(json.loads(before["metrics.json"]), json.loads((out_dir / "metrics.json").read_text())):
        return False
    for name, content in before.items():
        atomic_write(out_dir / name, lambda f, content=content: f.write(content))
    log.info("every number equals the last call's: %s/metrics.json and report.md kept as they were", out_dir)
    return True


def _read_recipe(run_dir: Path) -> dict | None:
    path = run_dir / RECIPE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def _text(value) -> str:
    return "(none)" if value is None else value if isinstance(value, str) else json.dumps(value)


def _short(digest: str | None) -> str:
    return "(none)" if digest is None else digest[:12]

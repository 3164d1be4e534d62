"""Typed run configuration: dataclasses that load from JSON/TOML and reject unknown keys.

A run is fully described by one :class:`Config`. It is saved, resolved, in the run
directory (``config.json``) and inside every checkpoint, so that a run can be resumed
or re-scored without the command line that made it. Command lines change it with
dotted overrides (``--model.latent_dim=32``), parsed by the type of the field they
name; a mistyped key is refused with a "did you mean".

Every field declares the values it may take beside it (``field(metadata=...)``, a
:class:`Rule`); a config is checked against them whenever one is made, and the command
line checks its own numbers against the same rules (:func:`rule_of`). An error names
the key, the value and what is allowed: ``train.epochs = 0: must be an integer >= 1``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..infra.deprecated import renamed_keys
from ..infra.errors import ConfigError
from ..infra.registry import check_options, did_you_mean

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "TrainConfig"]


@dataclass(frozen=True)
class Rule:
    """The values one setting may take, beyond its type: a range, a set of names, a
    pattern, or a check function returning what is wrong (or None)."""

    low: float | None = None  # smallest allowed value (excluded when low_open)
    high: float | None = None  # largest allowed value
    low_open: bool = False
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None  # a tuple, or a function (registries)
    pattern: str | None = None  # a regular expression the whole string must match
    check: Callable[[Any], str | None] | None = None
    text: str = ""  # what is allowed, in words (default: made from the fields above)

    def problem(self, value, ftype=object) -> str | None:
        """What is wrong with ``value`` (already of type ``ftype``), or None."""
        ranged = self.low is not None or self.high is not None
        if ranged and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                       not math.isfinite(value) or not self._in_range(value)):
            return f"must be {_kind(ftype)}{self._range()}{' (or null)' if type(None) in _allowed(ftype) else ''}"
        if self.choices is not None and value not in self.names():
            return f"must be one of {', '.join(self.names())}{did_you_mean(str(value), self.names())}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must be {self.text or 'a string matching ' + self.pattern}"
        return self.check(value) if self.check else None

    def names(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def verify(self, key: str, value, ftype=object) -> None:
        """Raise a ConfigError naming ``key`` when ``value`` breaks this rule."""
        problem = None if value is None else self.problem(value, ftype)
        if problem:
            raise ConfigError(f"{key} = {value!r}: {problem}")

    def _in_range(self, value) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        return above and (self.high is None or value <= self.high)

    def _range(self) -> str:
        parts = ([f"{'>' if self.low_open else '>='} {self.low}"] if self.low is not None else []) + \
                ([f"<= {self.high}"] if self.high is not None else [])
        return f" {' and '.join(parts)}" if parts else ""


def _kind(ftype) -> str:
    """``int | None`` → ``"an integer"``: the type in words, for messages."""
    allowed = _allowed(ftype)
    return "an integer" if int in allowed else "a finite number" if float in allowed else "a number"


ANY = Rule()
COUNT = Rule(low=1)  # sizes, counts, epochs, sample numbers
NON_NEGATIVE = Rule(low=0)
WORD = Rule(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*", text="a plain word (letters, digits, _ . -), e.g. 'mnist'")


def _registry(module: str, name: str) -> Callable[[], list[str]]:
    """The names of a registry, looked up when first needed (config is imported first)."""
    return lambda: getattr(importlib.import_module(module, __package__), name).names()


def _device_problem(name: str) -> str | None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        return "must be a device torch knows that vaeood runs on: cpu, cuda or cuda:N"
    return None


def _dataset_name_problem(text: str) -> str | None:
    """A dataset name is a plain word, or a folder path: anything with a '/' (see
    :mod:`vaeood.data.folder_dataset`)."""
    if any(sep and sep in text for sep in ("/", os.sep, os.altsep)):
        return _path_problem(text) and "must be a folder path (no NUL character) or a plain word"
    return WORD.problem(text, str) and ("must be a plain word (letters, digits, _ . -), e.g. 'mnist', or a folder "
                                        "of PNG/JPEG images given as a path with a '/', e.g. './images'")


def _image_size_problem(value: list) -> str | None:
    ok = len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    return None if ok else "must be [H, W]: two whole numbers ≥ 1"


def _path_problem(text: str) -> str | None:
    return "must be a folder path (not empty, no NUL character)" if not text or "\0" in text else None


def _rule(rule: Rule, **kwargs):
    """``field(...)`` with its Rule in the metadata."""
    return field(metadata={"rule": rule}, **kwargs)


#: the bf16 switch's dtype by name, resolved by train (config does not import torch)
PRECISIONS = {"fp32": None, "bf16": "bfloat16"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

#: ranges of plug-in options (likelihood, objective and estimator options), by option
#: name: the same name means the same kind of number in every plug-in
OPTION_RULES = {
    "k": COUNT, "samples": COUNT, "n_mix": COUNT, "chunk_size": COUNT, "max_elements": COUNT,
    "refine_steps": NON_NEGATIVE, "steps": NON_NEGATIVE,
    "step_size": Rule(low=0, high=1, low_open=True), "refine_step_size": Rule(low=0, high=1, low_open=True),
}


@dataclass
class DataConfig:
    """Which images the model is trained on."""

    # a dataset name, or a folder of PNG/JPEG images (a path with a '/', optionally one subfolder per class)
    name: str = _rule(Rule(check=_dataset_name_problem), default="fashion_mnist")
    split: str = _rule(WORD, default="train")
    # None: --data-dir / $VAEOOD_DATA / default search dirs
    data_dir: str | None = _rule(Rule(check=_path_problem), default=None)
    limit: int | None = _rule(COUNT, default=None)  # train on the first `limit` images only (quick presets)
    allow_sample: bool = False  # fall back to the bundled offline sample if not found
    # keep the last `holdout` images of the split out of training (detectors fit on them)
    holdout: int | None = _rule(COUNT, default=None)
    # replace each pixel by a uniform random value with this probability (Ren et al.'s background model, 0.1-0.3)
    noise_rate: float = _rule(Rule(low=0, high=1), default=0.0)
    # shuffle each training image's tiles of this size (0: off): a model of local statistics only,
    # the background of a likelihood ratio against local statistics (Schirrmeister et al. 2020)
    shuffle_patches: int = _rule(Rule(low=0), default=0)
    # folder datasets only: "pad" / "resize" images of another shape than the folder's most common
    # (data/conform.py; recorded in the provenance); None refuses them, each named
    conform: str | None = _rule(Rule(choices=("pad", "resize")), default=None)
    # folder datasets only: skip unusable files (logged, listed in the checkpoint's train_data) instead of refusing
    skip_bad: bool = False
    # folder datasets only: the working resolution [H, W] every image is conformed to by data.conform
    # (vaeood fit chooses it from the folder, data/working_size.py); None: the folder's most common size
    image_size: list | None = _rule(Rule(check=_image_size_problem), default=None)


@dataclass
class ModelConfig:
    """The VAE: encoder/decoder architecture and the decoder likelihood p(x|z)."""

    arch: str = _rule(Rule(choices=_registry("..models", "ARCHITECTURES")), default="conv")
    likelihood: str = _rule(Rule(choices=_registry("..models", "LIKELIHOODS")), default="bernoulli")
    latent_dim: int = _rule(COUNT, default=16)
    base_channels: int = _rule(COUNT, default=32)  # conv width (the "capacity" knob of Dai & Wipf)
    hidden_dim: int = _rule(COUNT, default=512)  # mlp width (784-512-z in the Keras-blog VAE)
    likelihood_options: dict = field(default_factory=dict)  # e.g. {"n_mix": 5}; checked by _check_options
    arch_options: dict = field(default_factory=dict)  # hvae: e.g. {"latent_dims": [32, 16, 8]} (models/hvae.py)


@dataclass
class TrainConfig:
    """Optimisation: objective, budget, seed and device."""

    objective: str = _rule(Rule(choices=_registry("..inference.objectives", "OBJECTIVES")), default="elbo")
    objective_options: dict = field(default_factory=dict)  # e.g. {"k": 5} for iwae; checked by _check_options
    epochs: int = _rule(COUNT, default=10)
    batch_size: int = _rule(COUNT, default=128)
    lr: float = _rule(Rule(low=0, low_open=True), default=1e-3)
    weight_decay: float = _rule(Rule(low=0), default=0.0)  # L2 penalty on the weights (Adam's weight_decay)
    seed: int = _rule(Rule(low=0, high=2**32 - 1), default=0)  # products with it stay within int64
    device: str = _rule(Rule(check=_device_problem), default="cpu")  # "cpu", "cuda", "cuda:1", ...
    max_nonfinite_steps: int = _rule(COUNT, default=20)  # stop after this many NaN/inf losses in a row
    # "fp32" or "bf16" (autocast for conv/linear; log-likelihoods stay fp32)
    precision: str = _rule(Rule(choices=tuple(PRECISIONS)), default="fp32")
    channels_last: bool = False  # NHWC convolutions (GPUs; on this CPU it slowed training, BENCHMARKS.md)
    compile: bool = False  # torch.compile the training loss (encoder, decoder, likelihood): for GPUs
    # torch.compile mode; reduce-overhead adds CUDA graphs on a GPU
    compile_mode: str = _rule(Rule(choices=COMPILE_MODES), default="reduce-overhead")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> Config:
        """Check every field's type and rule, and the plug-in options; raise a
        ConfigError naming the first key that breaks one."""
        for section in dataclasses.fields(self):
            part = getattr(self, section.name)
            types = _field_types(type(part))
            for f in dataclasses.fields(part):
                key = f"{section.name}.{f.name}"
                value = _check_type(getattr(part, f.name), types[f.name], key)
                f.metadata.get("rule", ANY).verify(key, value, types[f.name])
                setattr(part, f.name, value)  # an int given for a float field becomes a float
        _check_options(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> Config:
        return _build(cls, renamed_keys(raw, RENAMED, where), where)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        return cls.from_dict(read_config_file(path), where=str(path))

    def override(self, dotted: dict[str, str]) -> Config:
        """Return a copy with ``{"model.latent_dim": "32"}``-style overrides applied."""
        raw = self.to_dict()
        for key, text in renamed_keys(dotted, RENAMED, "overrides").items():
            parts = key.split(".")
            node, cls = raw, Config
            for i, part in enumerate(parts):
                names = {f.name: f for f in dataclasses.fields(cls)}
                if part not in names:
                    prefix = ".".join(parts[:i])
                    full = [f"{prefix}.{n}" if prefix else n for n in names]
                    raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, full)}")
                ftype = _field_types(cls)[part]
                if i == len(parts) - 1:
                    node[part] = _parse_text(text, ftype, key)
                elif dataclasses.is_dataclass(ftype):
                    node, cls = node[part], ftype
                else:
                    raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} has no sub-keys")
        return Config.from_dict(raw, where="overrides")


#: old config keys → their new names, still read for one release (0.2) with a warning
RENAMED = {"data.fit": "data.conform"}


def read_config_file(path: str | Path) -> dict:
    """The raw contents of a JSON or TOML config file (not yet checked)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"latent_dim": 4}}`` → ``{"model.latent_dim": 4}`` (option dicts are values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not prefix:
            out.update(flatten(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_rule(key: str) -> tuple[Rule, Any]:
    """The rule and type of a config field named by its dotted key (``"data.limit"``),
    for command-line values that mean the same thing."""
    section, name = key.split(".")
    cls = _field_types(Config)[section]
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[name]
    return meta.get("rule", ANY), _field_types(cls)[name]


def parse_value(text: str, ftype, rule: Rule, key: str):
    """Parse a command-line value by its type and check it against its rule."""
    value = _parse_text(text, ftype, key)
    rule.verify(key, value, ftype)
    return value


def check_plugin_options(key: str, fn, options: dict, kind: str, name: str, supplied: tuple[str, ...]) -> None:
    """Options of a plug-in (``model.likelihood_options``, ...): only those ``fn`` takes,
    each of the type of its default and in the range of :data:`OPTION_RULES`."""
    bad = [k for k in options if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{key}: option names must be strings, got {bad[0]!r}")
    try:
        check_options(fn, options, kind, name, supplied)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    params = inspect.signature(fn).parameters
    for opt, value in options.items():
        default = params[opt].default
        ftype = object if default is inspect.Parameter.empty or default is None else type(default)
        value = value if ftype is object else _check_type(value, ftype, f"{key}.{opt}")
        OPTION_RULES.get(opt, ANY).verify(f"{key}.{opt}", value, ftype)


def _check_options(config: Config) -> None:
    from ..models import LIKELIHOODS
    from ..inference.objectives import make_objective

    m, t = config.model, config.train
    check_plugin_options("model.likelihood_options", LIKELIHOODS.get(m.likelihood), m.likelihood_options,
                         "likelihood", m.likelihood, ("channels",))
    check_plugin_options("train.objective_options", make_objective(t.objective), t.objective_options,
                         "objective", t.objective, ("model", "x", "index"))


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table/object, got {type(raw).__name__}")
    types = _field_types(cls)
    unknown = [k for k in raw if k not in types]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}: unknown key {k!r}{did_you_mean(str(k), types)}; known: {', '.join(types)}")
    kwargs = {}
    for name, value in raw.items():
        ftype = types[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value, f"{where}.{name}" if where != "config" else name)
        else:
            kwargs[name] = _check_type(value, ftype, f"{where}.{name}")
    try:
        return cls(**kwargs)  # a Config checks every field's rule
    except ConfigError as exc:
        if where in ("config", "overrides"):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _allowed(ftype) -> tuple[type, ...]:
    args = typing.get_args(ftype)
    return tuple(a for a in args) if args else (ftype,)


def _check_type(value, ftype, where: str):
    allowed = _allowed(ftype)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}: expected {_type_name(ftype)}, got a boolean {value!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tuple(a for a in allowed if a is not type(None))):
        raise ConfigError(f"{where}: expected {_type_name(ftype)}, got {type(value).__name__} {value!r}")
    return value


def _type_name(ftype) -> str:
    return " or ".join("null" if a is type(None) else a.__name__ for a in _allowed(ftype))


def _parse_text(text: str, ftype, key: str):
    """Parse a command-line override by the type of the field it sets."""
    allowed = _allowed(ftype)
    if text.lower() in ("none", "null") and type(None) in allowed:
        return None
    if str in allowed:
        return text
    try:
        value = json.loads(text.lower() if bool in allowed else text)
    except json.JSONDecodeError:
        raise ConfigError(f"--{key}: cannot parse {text!r} as {_type_name(ftype)}") from None
    return _check_type(value, ftype, f"--{key}")

"""Typed run configuration: dataclasses that load from JSON/TOML and reject unknown keys.

A run is fully described by one :class:`Config`. It is saved, resolved, in the run
directory (``config.json``) and inside every checkpoint, so that a run can be resumed
or re-scored without the command line that made it. Command lines change it with
dotted overrides (``--model.latent_dim=32``), parsed by the type of the field they
name; a mistyped key is refused with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import did_you_mean


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


@dataclass
class DataConfig:
    """Which images the model is trained on."""

    name: str = "fashion_mnist"
    split: str = "train"
    data_dir: str | None = None  # None: --data-dir / $VAEOOD_DATA / default search dirs
    limit: int | None = None  # train on the first `limit` images only (quick presets)
    allow_sample: bool = False  # fall back to the bundled offline sample if not found


@dataclass
class ModelConfig:
    """The VAE: encoder/decoder architecture and the decoder likelihood p(x|z)."""

    arch: str = "conv"  # conv | mlp | hvae
    likelihood: str = "bernoulli"  # bernoulli | dlogistic | categorical
    latent_dim: int = 16
    base_channels: int = 32  # conv width (the "capacity" knob of Dai & Wipf)
    hidden_dim: int = 512  # mlp width (784-512-z in the Keras-blog VAE)
    likelihood_options: dict = field(default_factory=dict)  # e.g. {"n_mix": 5}
    arch_options: dict = field(default_factory=dict)  # hvae: e.g. {"latent_dims": [32, 16, 8]} (models/hvae.py)


@dataclass
class TrainConfig:
    """Optimisation: objective, budget, seed and device."""

    objective: str = "elbo"
    objective_options: dict = field(default_factory=dict)  # e.g. {"k": 5} for iwae
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    max_nonfinite_steps: int = 20  # stop after this many NaN/inf losses in a row
    precision: str = "fp32"  # "fp32" or "bf16" (autocast for conv/linear; log-likelihoods stay fp32)
    channels_last: bool = False  # NHWC convolutions (GPUs; on this CPU it slowed training, BENCHMARKS.md)
    compile: bool = False  # torch.compile the training loss (encoder, decoder, likelihood): for GPUs
    compile_mode: str = "reduce-overhead"  # torch.compile mode; reduce-overhead adds CUDA graphs on a GPU


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> "Config":
        return _build(cls, raw, where)

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        try:
            raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc
        return cls.from_dict(raw, where=str(path))

    def override(self, dotted: dict[str, str]) -> "Config":
        """Return a copy with ``{"model.latent_dim": "32"}``-style overrides applied."""
        raw = self.to_dict()
        for key, text in dotted.items():
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


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table/object, got {type(raw).__name__}")
    types = _field_types(cls)
    unknown = [k for k in raw if k not in types]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}: unknown key {k!r}{did_you_mean(k, types)}; known: {', '.join(types)}")
    kwargs = {}
    for name, value in raw.items():
        ftype = types[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value, f"{where}.{name}" if where != "config" else name)
        else:
            kwargs[name] = _check_type(value, ftype, f"{where}.{name}")
    return cls(**kwargs)


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

"""Configs as typed dataclasses and `save_pretrained` / `from_pretrained` for every network.

A component directory holds `config.json` (the constructor arguments, the class name and a
schema version) and `model.safetensors` (the weights). Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SCHEMA_VERSION = 2
C = TypeVar("C", bound="StrictConfig")
M = TypeVar("M", bound="PretrainedModule")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, from another schema or inconsistent."""


def read_config(path: Path, key: str, expected: str) -> dict:
    """A checkpoint JSON file whose `key` must be `expected`, at this library's schema version."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg})") from None
    if meta.get(key) != expected:
        raise CheckpointError(f"{path} holds a {meta.get(key)!r}, expected {expected}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        fix = (
            "retrain it with this release (`whatif train`), or load it with the release that wrote it"
            if isinstance(version, int) and version < SCHEMA_VERSION
            else "use a whatif-cxr release that reads it"
        )
        raise CheckpointError(f"{path}: schema version {version}, this library reads {SCHEMA_VERSION}; {fix}")
    return meta


def checkpoint_digest(directory: str | Path) -> str:
    """The first 16 hex digits of a SHA-256 over a checkpoint's configs and weights (every `.json`
    and `.safetensors` file, by relative path): what made a result, in its provenance. The model
    card is left out, so that rewording it does not change the model's name."""
    directory = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.suffix in (".json", ".safetensors") and p.is_file()):
        rel = path.relative_to(directory).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@dataclasses.dataclass
class StrictConfig:
    """Base of component configs: an unknown key is an error, not silently ignored."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], complete: bool = False) -> C:
        """`data` -> the config; with `complete`, as a checkpoint stores it, every field must be there."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        missing = sorted(names - set(data)) if complete else []
        if missing:
            raise CheckpointError(
                f"{cls.__name__} lacks key(s) {', '.join(missing)}; "
                "a checkpoint spells out every one (re-save it or retrain)"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class PretrainedModule(nn.Module):
    """An `nn.Module` built from one `config_class` instance, saved as config.json + safetensors."""

    config_class: ClassVar[type[StrictConfig]]

    def __init__(self, config: StrictConfig):
        super().__init__()
        self.config = config

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"class": type(self).__name__, "schema_version": SCHEMA_VERSION, "config": self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"class": type(self).__name__})

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu") -> M:
        directory = Path(directory)
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        for path in (cfg_path, weights):
            if not path.is_file():
                raise CheckpointError(f"{cls.__name__}: {path} is missing")
        meta = read_config(cfg_path, "class", cls.__name__)
        model = cls(cls.config_class.from_dict(meta["config"], complete=True))
        state = load_file(str(weights), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not match {cls.__name__}: missing {len(missing)} tensors "
                f"({', '.join(missing[:3])}), unexpected {len(unexpected)} ({', '.join(unexpected[:3])})"
            )
        return model.eval()

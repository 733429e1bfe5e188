"""Resumable training state without pickle: weights and optimiser tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_state(
    directory: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer], meta: dict
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, list] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"model/{name}/{k}"] = v.detach().contiguous().cpu()
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"optim/{name}/{idx}/{k}"] = (
                    (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
                )
        groups[name] = sd["param_groups"]
    tmp = directory / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / "state.safetensors")
    (directory / "state.json").write_text(json.dumps({**meta, "param_groups": groups}, indent=2) + "\n")


def load_state(
    directory: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict:
    meta = json.loads((directory / "state.json").read_text())
    # Read onto the CPU (saved from any device, in any dtype) and put where the training is:
    # `load_state_dict` copies into the modules' own parameters, and an optimiser's moments go to
    # their parameter's device and dtype (Adam's step counter stays on the CPU, where it belongs).
    tensors = load_file(str(directory / "state.safetensors"))
    # A module the saved state lacks (left frozen in the last sitting) keeps the weights it has,
    # the run's checkpoint, and starts a fresh optimiser.
    for name, module in modules.items():
        prefix = f"model/{name}/"
        saved = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if saved:
            module.load_state_dict(saved)
    for name, opt in optimizers.items():
        if name not in meta["param_groups"]:
            continue
        prefix = f"optim/{name}/"
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix) :].split("/", 1)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    return meta

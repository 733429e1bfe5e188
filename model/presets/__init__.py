"""Named model configurations as data (`*.json` beside this file), with a registry.

`get_preset("tiny")` returns a `Preset` with one validated config per component; an unknown
preset name or an unknown key anywhere is an error. The embedded default is just another preset.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

from ..causal_transformer import TransformerConfig
from ..contrastive import ContrastiveConfig
from ..editor import EditorConfig
from ..eval_classifier import EvalClassifierConfig
from ..findings_head import FindingsHeadConfig
from ..identity_encoder import IdentityEncoderConfig
from ..modeling import CheckpointError
from ..pathology_diffusion import DiffusionConfig
from ..sampling import SamplingConfig
from ..seed_optimization import SeedOptConfig
from ..segmenter import SegmenterConfig
from ..vae import VAEConfig

COMPONENT_CONFIGS = {
    "vae": VAEConfig,
    "transformer": TransformerConfig,
    "findings_head": FindingsHeadConfig,
    "diffusion": DiffusionConfig,
    "contrastive": ContrastiveConfig,
    "identity_encoder": IdentityEncoderConfig,
    "eval_classifier": EvalClassifierConfig,
    "segmenter": SegmenterConfig,
    "editor": EditorConfig,
}


@dataclasses.dataclass
class Preset:
    name: str
    description: str
    resolution: int
    components: dict  # name -> config instance
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    seed_optimization: SeedOptConfig = dataclasses.field(default_factory=SeedOptConfig)

    def to_dict(self) -> dict:
        return {
            "description": self.description,
            "resolution": self.resolution,
            **{k: v.to_dict() for k, v in self.components.items()},
            "sampling": self.sampling.to_dict(),
            "seed_optimization": self.seed_optimization.to_dict(),
        }


def available_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def preset_from_dict(name: str, data: dict) -> Preset:
    known = {"description", "resolution", "sampling", "seed_optimization", *COMPONENT_CONFIGS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"preset {name!r}: unknown key(s) {', '.join(unknown)}")
    components = {key: cls.from_dict(data.get(key, {})) for key, cls in COMPONENT_CONFIGS.items()}
    res = int(data["resolution"])
    vae, tr, diff = components["vae"], components["transformer"], components["diffusion"]
    latent = res // 2 ** (len(vae.channel_mult) - 1)
    if tr.latent_size != latent or diff.latent_size != latent:
        raise CheckpointError(
            f"preset {name!r}: resolution {res} gives latent {latent}, "
            f"transformer/diffusion say {tr.latent_size}/{diff.latent_size}"
        )
    if tr.latent_channels != vae.latent_channels:
        raise CheckpointError(f"preset {name!r}: transformer latent_channels must equal vae latent_channels")
    if diff.cross_attention_dim != components["contrastive"].text_width:
        raise CheckpointError(f"preset {name!r}: diffusion cross_attention_dim must equal contrastive text_width")
    settings = {}
    for key, cls in (("sampling", SamplingConfig), ("seed_optimization", SeedOptConfig)):
        try:
            settings[key] = cls.from_dict(data.get(key, {}))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"preset {name!r}: {key}: {exc}") from None
    return Preset(
        name, data.get("description", ""), res, components, settings["sampling"], settings["seed_optimization"]
    )


def get_preset(name: str) -> Preset:
    names = available_presets()
    if name not in names:
        raise CheckpointError(f"unknown preset {name!r}; available: {', '.join(names)}")
    data = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())
    return preset_from_dict(name, data)

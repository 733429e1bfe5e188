"""The options of `whatif train`, each declared once: a field of `Hyper` with an `Option`.

The command line (`whatif.train_cmd`), the checks `train()` makes before anything trains, the
checkpoint's per-sitting record (config.json: training.stages.<stage>.runs), a recipe's sittings
(`recipes/*.toml`) and the model card's commands all read the fields. Kept free of torch, so that
building the command line costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

STAGES = ("stage0", "stage1", "stage2", "classifier", "segmenter", "editor")
# What `whatif train all` runs, in order. Not the segmenter nor the editor: they train on phantoms only
# (exact masks, exact pairs), where "all" also runs on real data; their own sittings add them.
ALL_STAGES = ("stage0", "stage1", "stage2", "classifier")
STAGE0_PARTS = ("contrastive", "identity", "classifier")
STAGE0_FREEZABLE = (*STAGE0_PARTS, "text", "image")


@dataclasses.dataclass(frozen=True)
class Option:
    """A `whatif train` option, declared once on its `Hyper` field.

    The flag is `--` and the field's name with dashes; the field's name is also the key of the
    option in a recipe's sitting and in the checkpoint's per-sitting record
    (config.json: training.stages.<stage>.runs).
    """

    stages: tuple[str, ...]  # the stages it applies to: set for another stage, it is refused
    help: str
    check: Callable[[str, Any], str | None]  # (flag, value) -> what is wrong with it, or None
    recorded: str = "always"  # in every sitting of its stages, or "if set" (when not the default)
    requires: str | None = None  # the option it qualifies: unused and unrecorded without that one set
    before: Any = None  # its value in sittings recorded before it existed (None: the default)
    choices: tuple[str, ...] | None = None  # a list option: a repeatable flag, each value one of these


def option(default: Any, **kwargs) -> Any:
    return dataclasses.field(default=default, metadata={"option": Option(**kwargs)})


def _at_least(low: float, what: str) -> Callable[[str, Any], str | None]:
    return lambda flag, v: None if v >= low else f"{flag} is {what}, at least {low:g}; got {v:g}"


def _above_zero(flag: str, v: float) -> str | None:
    return None if v > 0 else f"{flag} is a learning rate, above 0; got {v:g}"


def _probability(flag: str, v: float) -> str | None:
    return None if 0 <= v <= 1 else f"{flag} is a probability, in [0, 1]; got {v:g}"


def _check_freeze(flag: str, parts: tuple[str, ...]) -> str | None:
    if set(parts) - set(STAGE0_FREEZABLE) or set(parts) >= set(STAGE0_PARTS):
        return (
            f"{flag} applies to stage0 only, names some of {', '.join(STAGE0_FREEZABLE)} "
            f"and leaves one to train; got {', '.join(parts)}"
        )
    for tower in ("text", "image"):
        if {tower, "contrastive"} <= set(parts):
            return f"{flag} {tower} leaves the other tower to train; {flag} contrastive already freezes both towers"
    if {"text", "image"} <= set(parts):
        return f"{flag} text {flag} image leaves the contrastive model nothing to train; use {flag} contrastive"
    return None


@dataclasses.dataclass
class Hyper:
    """The training hyper-parameters: paper section 4.1's defaults.

    Fields declared with `option(...)` are `whatif train`'s options (see `Option`); the others
    are the paper's constants, documented here and not offered on the command line.
    """

    lr: float = option(
        1e-4,
        stages=STAGES,
        check=_above_zero,
        help="learning rate: stage 1's lr_1 = lr_2 (section 4.1); stages 0 and 2 and the classifier use 3x, "
        "the segmenter and the editor 10x",
    )
    # alpha of Eq. 9-10, on L_KL (Eq. 5) taken per latent element (mean): with the sum, 0.1 would
    # swamp a per-pixel MSE.
    kl_weight: float = option(
        0.1,
        stages=("stage1",),
        check=_at_least(0, "a weight"),
        help="alpha, the weight of the per-element KL (Eq. 9-10)",
    )
    # Not in the paper: the paired counterfactual term on phantoms (0 = the paper's stage 1). Real
    # data has no pixel-aligned counterfactuals; the phantom has them by design.
    paired_weight: float = option(
        0.0,
        stages=("stage1",),
        recorded="if set",
        check=_at_least(0, "a weight"),
        help="on phantoms: weight of the paired true-counterfactual term (0: the paper's stage 1)",
    )
    # How much more the pixels where the pair differs weigh in L_recon and the paired term: a
    # finding covers a small share of the image, which an unweighted MSE hardly sees.
    paired_focus: float = option(
        50.0,
        stages=("stage1",),
        requires="paired_weight",
        check=_at_least(0, "an extra weight"),
        help="extra weight of the pixels where a pair differs (its findings)",
    )
    # Not in the paper: probability of each acquisition augmentation (blur, noise, exposure) per
    # image in the evaluation classifier's own stage (`training.augment`). A judge that has only
    # seen one render's sharpness scores texture, not findings. Sittings recorded before the
    # option existed trained without it. The segmenter's stage draws its positioning (rotation,
    # zoom, shift) and exposure gain with the same probability.
    acquisition_augment: float = option(
        0.8,
        stages=("classifier", "segmenter"),
        before=0.0,
        check=_probability,
        help="probability of each of blur, noise and exposure per image (0: none); the segmenter's "
        "positioning and gain too",
    )
    # Stage 0's networks to leave as they are: e.g. to train E_CXR further without touching an
    # evaluation classifier its own stage has trained since. "text" is the contrastive model's
    # text tower alone: stage 2 cross-attends to its token features, so with it frozen E_CXR can
    # train on without invalidating a trained stage 2. "image" is the converse: the text tower
    # trains against a fixed E_CXR (as LiT locks one tower), so stage 1's L_PC, the reference
    # centroids and seed optimisation's L_P keep the E_CXR they were made with.
    freeze: tuple[str, ...] = option(
        (),
        stages=("stage0",),
        recorded="if set",
        choices=STAGE0_FREEZABLE,
        check=_check_freeze,
        help="leave this network as it is (repeatable); text: the text tower only, which stage 2 "
        "is conditioned on; image: E_CXR only, which stage 1, the centroids and seed optimisation read",
    )
    beta: float = 5.0  # L_cls, the findings head's per-label BCE (Eq. 6, read as multi-label)
    lam: float = 0.01  # lambda, the SSIM term of L_recon (Eq. 4)
    gamma: float = 1.0  # L_ID of the pathology swap (Eq. 7)
    delta: float = 2.5  # L_PC of the pathology swap (Eq. 8)
    swap_every: int = 5  # the swap's period in steps (Algorithm 1, line 6)
    caption_dropout: float = 0.1  # share of empty captions in stage 2, the unconditional model of guidance

    @classmethod
    def options(cls) -> list[tuple[str, Option, Any]]:
        """(name, Option, default) of each option, in declaration order."""
        return [(f.name, f.metadata["option"], f.default) for f in dataclasses.fields(cls) if "option" in f.metadata]

    @classmethod
    def from_options(cls, values: dict, where: str = "") -> Hyper:
        """A Hyper with these options set (a recipe's sitting, the command line's flags); ValueError
        for an unknown option or a value of the wrong kind."""
        known = {name: default for name, _, default in cls.options()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}unknown option {', '.join(unknown)}; the options are {', '.join(known)}")
        kwargs = {}
        for name, v in values.items():
            if isinstance(known[name], tuple):
                v = tuple(v)
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{where}{name} is a number, got {v!r}")
            kwargs[name] = float(v) if isinstance(known[name], float) else v
        return cls(**kwargs)

    def problem(self, stage: str) -> str | None:
        """What is wrong with these options for `stage` ("all" for every stage): an option set for a
        stage it does not apply to, a bad value, or an option set without the one it qualifies."""
        defaults = {name: default for name, _, default in self.options()}
        for name, opt, default in self.options():
            flag, value = "--" + name.replace("_", "-"), getattr(self, name)
            if value == default:
                continue
            if stage != "all" and stage not in opt.stages:
                return f"{flag} applies to {' and '.join(opt.stages)} only, not {stage}"
            if opt.requires and getattr(self, opt.requires) == defaults[opt.requires]:
                return f"{flag} qualifies --{opt.requires.replace('_', '-')}; pass that too"
            problem = opt.check(flag, value)
            if problem:
                return problem
        return None

    def record(self, stage: str) -> dict:
        """The options of a sitting of `stage`, as the checkpoint's history records them."""
        defaults = {name: default for name, _, default in self.options()}
        out = {}
        for name, opt, default in self.options():
            value = getattr(self, name)
            if stage not in opt.stages or (opt.requires and getattr(self, opt.requires) == defaults[opt.requires]):
                continue
            if opt.recorded == "always" or value != default:
                out[name] = sorted(value) if opt.choices else value
        return out

    @classmethod
    def flags(cls, stage: str, run: dict) -> str:
        """The command-line flags that repeat a recorded sitting of `stage` (those not at their default)."""
        defaults = {name: default for name, _, default in cls.options()}

        def value(name, opt):
            return run.get(name, defaults[name] if opt is None or opt.before is None else opt.before)

        out = ""
        for name, opt, default in cls.options():
            flag, v = "--" + name.replace("_", "-"), value(name, opt)
            if stage not in opt.stages or (opt.requires and value(opt.requires, None) == defaults[opt.requires]):
                continue
            if opt.choices:
                out += "".join(f" {flag} {part}" for part in v)
            elif v != default:
                out += f" {flag} {v:g}"
        return out

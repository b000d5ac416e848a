"""LoRA adapters for unlearning (through ``peft``): the spec of ``--lora``, wrapping, the reference, merging.

Unlearning with LoRA (Hu et al. 2021) trains a low-rank update ``W + (α/r)·B·A`` of chosen linear layers and
leaves every base weight untouched. ``peft`` starts ``B`` at 0, so the adapted model *is* the original model at
step 0. That gives the reference model of NPO and of the KL retain term for free: π_ref is the same model with
its adapter disabled (``AdapterDisabled``: ``with model.disable_adapter():``), with no second copy of the
weights in memory (``bs_ref.unlearn.reference_model`` picks it for any LoRA model).

The spec string (``--lora`` of the experiment, ``UnlearnConfig.lora``, ``UnlearningTrainer(lora=...)``)::

    r=8,alpha=16,targets=q_proj,v_proj          rank r, scale α (the update is (α/r)·B·A), target modules
    r=16,alpha=32,targets=all-linear,dropout=0.05

Keys: ``r`` (integer >= 1, default 8), ``alpha`` (> 0, default 16), ``targets`` (module names, comma separated,
or ``all-linear``; default q_proj,v_proj), ``dropout`` (in [0, 1), default 0). A comma followed by a word
without ``=`` continues the target list.

    from bs_ref.lora import apply_lora, merge_lora
    model = apply_lora(model, "r=8,alpha=16,targets=q_proj,v_proj")   # a peft model; only the adapter trains
    model = unlearn(model, tokenizer, forget, retain, UnlearnConfig(method="npo"))  # or UnlearnConfig(lora=...)
    plain = merge_lora(model)                     # W + (α/r)·B·A folded in: a plain transformers model

``peft`` is an optional dependency: ``pip install -e '.[lora]'``. This module imports it only when a model is
wrapped, so parsing a spec and the rest of bs_ref work without it.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass

import torch

from bs_ref import checks

FLAG = "--lora"
INSTALL = "pip install -e '.[lora]'"
EXAMPLE = "r=8,alpha=16,targets=q_proj,v_proj"
KEYS = {
    "r": "r",
    "rank": "r",
    "alpha": "alpha",
    "lora_alpha": "alpha",
    "targets": "targets",
    "target_modules": "targets",
    "dropout": "dropout",
    "lora_dropout": "dropout",
}
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*$")


@dataclass(frozen=True)
class LoraSpec:
    """A parsed ``--lora`` spec (see the module docstring)."""

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0

    def spec(self) -> str:
        """The canonical spec string (parses back to this spec)."""
        alpha = int(self.alpha) if float(self.alpha).is_integer() else self.alpha
        text = f"r={self.r},alpha={alpha},targets={','.join(self.targets)}"
        return text + (f",dropout={self.dropout}" if self.dropout else "")

    def config(self):
        """The ``peft.LoraConfig`` (causal LM; no bias training)."""
        peft = require_peft()
        targets = "all-linear" if self.targets == ("all-linear",) else list(self.targets)
        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=targets,
            lora_dropout=self.dropout,
            bias="none",
            task_type="CAUSAL_LM",
        )


def _bad(spec: str, problem: str) -> ValueError:
    return ValueError(f"{FLAG} {spec!r}: {problem}; write e.g. {FLAG} {EXAMPLE} (keys: r, alpha, targets, dropout)")


def parse_lora_spec(spec: str | LoraSpec) -> LoraSpec:
    """``"r=8,alpha=16,targets=q_proj,v_proj"`` -> ``LoraSpec(8, 16.0, ("q_proj", "v_proj"), 0.0)``. Raises one
    ValueError naming ``--lora``, the problem and the fix."""
    if isinstance(spec, LoraSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty or not a string")
    values: dict[str, object] = {}
    key = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise _bad(spec, "an empty item (two commas in a row, or a trailing comma)")
        name, eq, text = part.partition("=")
        if not eq:  # a bare word continues the target list
            if key != "targets":
                raise _bad(spec, f"{part!r} is not key=value (only targets= takes several comma-separated names)")
            values["targets"].append(part)  # type: ignore[union-attr]
            continue
        key = KEYS.get(name.strip().lower())
        if key is None:
            raise _bad(spec, f"unknown key {name.strip()!r}")
        if key in values:
            raise _bad(spec, f"{key} is given twice")
        text = text.strip()
        if key == "targets":
            values[key] = [text] if text else []
        elif key == "r":
            try:
                values[key] = int(text)
            except ValueError:
                raise _bad(spec, f"r={text!r} is not an integer") from None
        else:
            try:
                values[key] = float(text)
            except ValueError:
                raise _bad(spec, f"{key}={text!r} is not a number") from None
    targets = tuple(values.get("targets", LoraSpec.targets))  # type: ignore[arg-type]
    out = LoraSpec(
        r=values.get("r", LoraSpec.r),
        alpha=values.get("alpha", LoraSpec.alpha),  # type: ignore[arg-type]
        targets=targets,
        dropout=values.get("dropout", LoraSpec.dropout),
    )  # type: ignore[arg-type]
    if out.r < 1:
        raise _bad(spec, f"r={out.r} must be an integer >= 1")
    if not (checks.finite(out.alpha) and out.alpha > 0):
        raise _bad(spec, f"alpha={out.alpha} must be a finite number > 0")
    if not checks.fraction(out.dropout, upper_open=True):
        raise _bad(spec, f"dropout={out.dropout} must lie in [0, 1)")
    if not targets or not all(_NAME.match(t) for t in targets):
        raise _bad(spec, f"targets={','.join(targets) or '(none)'} must name modules (q_proj,v_proj) or all-linear")
    return out


def lora_problem(spec) -> str | None:
    """None when ``spec`` parses and peft is installed, else the problem (for ``UnlearnConfig.validate``)."""
    try:
        parse_lora_spec(spec)
    except ValueError as error:
        return str(error)
    try:
        require_peft()
    except ImportError as error:
        return str(error)
    return None


def require_peft():
    """The ``peft`` module, or an ImportError with the install line."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA ({FLAG}) needs the peft package: {INSTALL} (or pip install 'peft>=0.17')") from error
    return peft


def is_lora_model(model) -> bool:
    """Whether ``model`` is a peft model (an adapter is attached). Never imports peft: a model can only be one
    after peft was imported."""
    if "peft" not in sys.modules:
        return False
    return isinstance(model, sys.modules["peft"].PeftModel)


def apply_lora(model, spec):
    """Attach a fresh LoRA adapter (``spec``: a spec string, a ``LoraSpec`` or a ``peft.LoraConfig``) and return
    the peft model; only the adapter's weights require gradients. peft wraps the layers of ``model`` in place,
    so ``model`` itself carries the adapter afterwards (deep-copy it first to keep a plain original)."""
    peft = require_peft()
    if is_lora_model(model):
        raise ValueError(
            f"the model already carries a LoRA adapter; pass it without {FLAG} (its adapter trains and "
            "the reference is the model with the adapter off), or merge_lora(model) first"
        )
    config = spec if isinstance(spec, peft.LoraConfig) else parse_lora_spec(spec).config()
    try:
        return peft.get_peft_model(model, config)
    except ValueError as error:
        if "not found in the base model" not in str(error) and "Target modules" not in str(error):
            raise
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"{FLAG}: target modules {config.target_modules} are not linear layers of this model; its "
            f"linear layers are {', '.join(names)} (or use targets=all-linear)"
        ) from None


class AdapterDisabled:
    """π_ref for a LoRA model: ``model`` called with its adapter disabled, in eval mode and without gradient.

    Stands in for the frozen reference copy wherever the loop calls one (``ref(input_ids=..., ...)``,
    ``ref.parameters()``, ``ref.to(device)``), without copying a weight. Since peft starts B at 0 it equals the
    initial policy; since the base weights never train it stays equal to it. Each module's train/eval mode is
    restored after the call."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    def parameters(self):
        return self.model.parameters()

    def to(self, *args, **kwargs):
        """A no-op: the reference lives wherever the model does."""
        return self

    def eval(self):
        return self


def merge_lora(model, inplace: bool = True):
    """The plain ``transformers`` model with the adapter folded into its weights (W + (α/r)·B·A), for export and
    attacks; a model without an adapter is returned as it is. ``inplace=False`` merges a deep copy and leaves
    ``model`` (still adapted) usable."""
    if not is_lora_model(model):
        return model
    target = model if inplace else copy.deepcopy(model)
    return target.merge_and_unload()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())

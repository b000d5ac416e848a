"""One declaration per unlearning method: its hyper-parameters, its forget term, and what it needs.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422); docs/theory.md §2–4.

Every method minimises (docs/theory.md §2, Eq. 2's composition)

    L = γ · L_forget(D_u) + α · L_retain(D_r)

and differs only in ``L_forget``, in whether it carries the retain term, and in what its forget term needs
(a frozen reference model, sampled beliefs). A declaration below says exactly that, in one place:

* its hyper-parameters, as dataclass fields with the paper's (or the authors') defaults — the command line
  of ``experiments/tofu.py`` and the method specs ``bs_t:lam=0.6,temperature=2`` are built from these fields;
* ``forget_loss(logits, labels, ref_logprobs, reduction)``: the forget term, calling its loss file in
  ``bs_ref.losses`` (RMU's takes the hidden states of its layer in place of the logits);
* ``retain`` (class attribute): whether α·L_retain is added (GA alone has none, Eq. 1);
* ``gamma``: the forget weight γ (SimNPO's default is 0.125, every other method's 1);
* ``needs_reference``: whether a frozen copy π_ref of the original model is needed;
* ``belief_sampling``: for BS-S, how global beliefs are drawn and cached (``bs_ref.beliefs.BeliefCache``);
* ``forget_terms``: the weighted row sets that make up the forget objective (``bs_ref.runner.ForgetTerm``: the
  rows, their weight, the loss that scores them, how they are chunked), which ``bs_ref.runner.run_rows`` runs for
  every method alike — the forget rows with weight 1 and ``forget_loss`` for every method; for BS-S (Eq. 7) the
  forget rows with weight 1 − λ_BSS and the belief rows with weight λ_BSS, scored by ``belief_piece`` in row
  chunks, or, with ``share_prefix`` / ``belief_subsample``, rows that carry their own weights (``bs_ref.prefix``);
* RMU's hooks, no-ops for every other method: ``reads_hidden_states`` and ``hidden(model, inputs)`` (its forget
  term reads one layer's states), ``prepare(model, seed)`` (draw what the method fixes once),
  ``trainable_names(model)`` (the parameters that train; None: all), ``retain_term(...)`` (a retain term of its
  own in place of the loop's NLL/KL) and ``retain_needs_reference``.

``reduction`` ("row" | "token", docs/theory.md §11–12) is the run's convention, passed by the loop to every term.

The loop (``bs_ref.unlearn``), the claims suite and the experiment know no method names: they look a method
up in ``METHODS`` (or parse a spec with ``method_from_spec``) and call these members. Adding a method is one
declaration here plus its loss file and tests.

    method = method_from_spec("bs_t:lam=0.6,tau=2")     # BST(lam=0.6, top_k=20, temperature=2.0)
    loss = method.forget_loss(logits, labels)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bs_ref import prefix
from bs_ref.beliefs import REGIMES, SELECT_MODES, BeliefSampling
from bs_ref.losses import (
    belief_counts,
    belief_piece,
    bs_t_loss,
    default_coefficient,
    ga_loss,
    ga_scaled_loss,
    ga_target_matched_loss,
    npo_loss,
    rmu_loss,
    rmu_retain_loss,
    sga_loss,
    simnpo_loss,
    steering_direction,
    weighted_row_piece,
    wga_loss,
)
from bs_ref.runner import ForgetTerm


def hp(default: Any, help: str, **metadata: Any) -> Any:
    """A hyper-parameter field: its default and the one-line help the command line shows."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class Method:
    """Base class of the declarations. Subclasses set ``name``/``title``/``equation`` and ``forget_loss``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    equation: ClassVar[str] = ""
    retain: ClassVar[bool] = True
    """Whether the retain term α·L_retain is added (docs/theory.md §2)."""
    reads_hidden_states: ClassVar[bool] = False
    """Whether ``forget_loss`` reads one layer's hidden states (``hidden``) in place of the logits (RMU)."""

    gamma: float = hp(1.0, "forget weight γ of L = γ·L_forget + α·L_retain")

    @property
    def needs_reference(self) -> bool:
        """Whether the forget term needs π_ref(y|x) of a frozen copy of the original model."""
        return False

    @property
    def belief_sampling(self) -> BeliefSampling | None:
        """How the method samples global beliefs (``bs_ref.beliefs.BeliefCache``); None: it samples none."""
        return None

    @property
    def top_k_for_logging(self) -> int:
        """k of the top-k mass S_k logged at every step (docs/theory.md D1/D2)."""
        return 20

    def forget_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, ref_logprobs=None, reduction: str = "row"
    ) -> torch.Tensor:
        """L_forget on one batch of rows (the scalar to minimise, before γ), reduced as ``reduction`` says."""
        raise NotImplementedError

    def forget_terms(self, forget_batch: dict, belief_batch: dict | None = None, reduction: str = "row") -> list:
        """The row sets of L_forget (``bs_ref.runner.ForgetTerm``): the forget batch alone, with weight 1 and scored
        by ``forget_loss``, for every method but BS-S."""
        return [ForgetTerm(forget_batch, 1.0, self.forget_loss, {"reduction": reduction})]

    def hidden(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the hidden states ``forget_loss`` reads, the logits) of one forward; only where ``reads_hidden_states``."""
        raise NotImplementedError

    def supports_reduction(self, reduction: str) -> bool:
        """Whether every term of the method can be reduced as ``reduction`` says ("row" always can)."""
        return reduction in ("row", "token")

    @property
    def retain_needs_reference(self) -> bool:
        """Whether the method's own retain term (``retain_term``) needs the frozen reference π_ref."""
        return False

    def retain_term(self, model, retain_batch: dict, ref_model=None, reduction: str = "row") -> torch.Tensor | None:
        """The method's own L_retain on a retain batch, or None: the loop's answer NLL or KL (docs/theory.md §2)."""
        return None

    def trainable_names(self, model) -> list[str] | None:
        """The names of the parameters of ``model`` that train (None: every parameter that requires grad)."""
        return None

    def prepare(self, model, seed: int = 0) -> None:
        """Fix what the method draws once per run from ``model`` and the run's ``seed`` (RMU: its direction)."""

    def validate(self) -> None:
        """Raise one ValueError naming the first bad hyper-parameter (as ``<method>:<field>``)."""
        _need(self, _finite(self.gamma) and self.gamma > 0, "gamma", "must be > 0")

    def spec(self) -> str:
        """The method spec that rebuilds this declaration: its name and every field that is not its default."""
        default = type(self)()
        changed = [f for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        if not changed:
            return self.name
        return self.name + ":" + ",".join(f"{f.name}={_format(getattr(self, f.name))}" for f in changed)

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., <field>: value}`` (nested declarations as their dicts), for config.json."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.as_dict() if isinstance(value, Method) else value
        return out


# -------------------------------------------------------------------------------------------------------------
# The declarations (docs/theory.md §2–4)
# -------------------------------------------------------------------------------------------------------------


@dataclass
class GA(Method):
    """Gradient ascent on the forget answers; no retain term."""

    name: ClassVar[str] = "ga"
    title: ClassVar[str] = "GA"
    equation: ClassVar[str] = "Eq. (1)"
    retain: ClassVar[bool] = False

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return ga_loss(logits, labels, reduction)  # Eq. (1)


@dataclass
class GradDiff(Method):
    """GA plus the retain term: Eq. (2) itself."""

    name: ClassVar[str] = "graddiff"
    title: ClassVar[str] = "GradDiff"
    equation: ClassVar[str] = "Eq. (2)"

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return ga_loss(logits, labels, reduction)  # Eq. (1); the loop adds α·L_retain: Eq. (2)


@dataclass
class NPO(Method):
    """Negative preference optimisation against a frozen reference (Zhang et al. 2024)."""

    name: ClassVar[str] = "npo"
    title: ClassVar[str] = "NPO"
    equation: ClassVar[str] = "Eq. (3)"

    beta: float = hp(0.1, "NPO inverse temperature β")

    @property
    def needs_reference(self) -> bool:
        return True

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        if ref_logprobs is None:
            raise ValueError("NPO needs ref_logprobs: log π_ref(y|x) of the frozen reference model on the same rows")
        return npo_loss(logits, labels, ref_logprobs, beta=self.beta, reduction=reduction)  # Eq. (3); "token": rows

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.beta) and self.beta > 0, "beta", "must be > 0")


@dataclass
class SimNPO(Method):
    """Reference-free, length-normalised NPO (Fan et al. 2024); its forget weight γ defaults to 0.125."""

    name: ClassVar[str] = "simnpo"
    title: ClassVar[str] = "SimNPO"
    equation: ClassVar[str] = "docs/theory.md §2"

    gamma: float = hp(0.125, "forget weight γ of L = γ·L_forget + α·L_retain (SimNPO: 0.125)")
    beta: float = hp(4.5, "SimNPO inverse temperature β")
    delta: float = hp(0.0, "SimNPO margin δ")

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return simnpo_loss(logits, labels, beta=self.beta, delta=self.delta, reduction=reduction)  # "token": rows

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.beta) and self.beta > 0, "beta", "must be > 0")
        _need(self, _finite(self.delta), "delta", "must be a finite number")


@dataclass
class WGA(Method):
    """Weighted gradient ascent: each token's NLL weighted by its detached probability to the power β."""

    name: ClassVar[str] = "wga"
    title: ClassVar[str] = "WGA"
    equation: ClassVar[str] = "Eq. (4)"

    beta: float = hp(1.0, "WGA weight exponent β")

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return wga_loss(logits, labels, beta=self.beta, reduction=reduction)  # Eq. (4)

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.beta) and self.beta >= 0, "beta", "must be >= 0")


RMU_PARAMETER = "mlp.down_proj.weight"
"""The weight of each trained layer that RMU updates (OpenUnlearning: ``model.layers.(5|6|7).mlp.down_proj.weight``)."""


@dataclass
class RMU(Method):
    """Representation misdirection (Li et al. 2024, WMDP §5): steer the forget answers' states of one layer to a
    fixed random direction, keep the retain answers' states at π_ref's; only a few layers train (docs/theory.md §14).

    Defaults are OpenUnlearning's TOFU configuration (``configs/trainer/RMU.yaml``): steering layer 7, the
    ``mlp.down_proj`` weights of layers 5–7, retain weight α = 1000, c = 300, γ = 1. A model with fewer layers steers
    its middle layer, and c is scaled to the hidden width (``steer_layer`` / ``steering_coeff`` None: §14)."""

    name: ClassVar[str] = "rmu"
    title: ClassVar[str] = "RMU"
    equation: ClassVar[str] = "docs/theory.md §14"
    reads_hidden_states: ClassVar[bool] = True

    steering_coeff: float | None = hp(
        None,
        "RMU steering coefficient c (None: 300·sqrt(d/2048), OpenUnlearning's 300 at Llama-3.2-1B's width d = 2048)",
    )
    steer_layer: int | None = hp(
        None,
        "RMU decoder layer ℓ whose output is steered, from 0 (None: min(7, (L-1)//2) of L layers; OpenUnlearning: 7)",
    )
    train_layers: int = hp(
        3, "RMU: the mlp.down_proj weights of this many layers, ℓ and below, train (OpenUnlearning: 3)"
    )
    retain_scale: float = hp(
        1000.0, "RMU weight of its activation retain term, times the run's α (OpenUnlearning: 1000)"
    )

    @property
    def retain_needs_reference(self) -> bool:
        return True

    # ---- what the run fixes once
    def layer_index(self, model) -> int:
        """ℓ: ``steer_layer``, or min(7, (L − 1) // 2) for a model of L decoder layers (docs/theory.md §14)."""
        n = len(_decoder_layers(model))
        layer = min(7, (n - 1) // 2) if self.steer_layer is None else self.steer_layer
        if not 0 <= layer < n:
            raise ValueError(f"rmu:steer_layer={layer} is out of range: the model has {n} decoder layers (0–{n - 1})")
        return layer

    def coefficient(self, width: int) -> float:
        """c: ``steering_coeff``, or 300·√(d/2048) for hidden width d (docs/theory.md §14)."""
        return default_coefficient(width) if self.steering_coeff is None else float(self.steering_coeff)

    def prepare(self, model, seed: int = 0) -> None:
        """Draw the direction u under ``seed`` (its own generator) and fix c·u for this model's width."""
        width = int(model.get_input_embeddings().weight.shape[-1])
        self._control = self.coefficient(width) * steering_direction(width, seed)
        self._layer = self.layer_index(model)

    def control(self, width: int) -> torch.Tensor:
        """c·u [d] (float64): the one ``prepare`` drew, or, unprepared, the one of seed 0 for this width."""
        control = getattr(self, "_control", None)
        if control is None or control.shape[0] != width:
            control = self._control = self.coefficient(width) * steering_direction(width, 0)
        return control

    def trainable_names(self, model) -> list[str]:
        """The ``mlp.down_proj`` weights of layers max(0, ℓ − train_layers + 1) … ℓ; on a LoRA model, every
        trainable (adapter) parameter of those layers."""
        layers, top = _decoder_layers(model), self.layer_index(model)
        wanted = {
            id(p)
            for i in range(max(0, top - self.train_layers + 1), top + 1)
            for n, p in layers[i].named_parameters()
            if p.requires_grad
        }
        lora = any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
        names = [n for n, p in model.named_parameters() if id(p) in wanted and (lora or n.endswith(RMU_PARAMETER))]
        if not names:
            raise ValueError(f"rmu: no trainable {RMU_PARAMETER} in decoder layers up to {top} of this model")
        return names

    # ---- the terms
    def hidden(self, model, rows: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the output of decoder layer ℓ [B, T, d], the logits) of one forward of ``model`` on ``rows``."""
        inner = getattr(model, "model", model) if type(model).__name__ == "AdapterDisabled" else model
        index = getattr(self, "_layer", None)
        layer = _decoder_layers(inner)[self.layer_index(inner) if index is None else index]
        captured = []

        def capture(module, args, out):
            captured.append(out[0] if isinstance(out, tuple) else out)

        handle = layer.register_forward_hook(capture)
        try:
            logits = model(input_ids=rows["input_ids"], attention_mask=rows.get("attention_mask")).logits
        finally:
            handle.remove()
        return captured[0], logits

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        """RMU's forget term; its first argument is the hidden states of layer ℓ [B, T, d], not the logits."""
        return rmu_loss(logits, labels, self.control(logits.shape[-1]), reduction)

    def retain_term(self, model, retain_batch: dict, ref_model=None, reduction: str = "row") -> torch.Tensor:
        """retain_scale · (1/d)·‖h_ℓ^θ − h_ℓ^ref‖² on the retain answers (π_ref: ``ref_model``, no gradient)."""
        if ref_model is None:
            raise ValueError(
                "rmu's retain term needs ref_model: π_ref on the same rows (bs_ref.unlearn.reference_model)"
            )
        device = next(model.parameters()).device
        rows = {k: v.to(device) for k, v in retain_batch.items() if isinstance(v, torch.Tensor)}
        hidden, _ = self.hidden(model, rows)
        with torch.no_grad():
            ref_hidden, _ = self.hidden(ref_model, rows)
        return self.retain_scale * rmu_retain_loss(hidden, ref_hidden, rows["labels"], reduction)

    def validate(self) -> None:
        super().validate()
        _need(
            self,
            self.steering_coeff is None or (_finite(self.steering_coeff) and self.steering_coeff > 0),
            "steering_coeff",
            "must be > 0, or None (scaled to the hidden width)",
        )
        layer = self.steer_layer
        _need(
            self,
            layer is None or (isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0),
            "steer_layer",
            "must be an integer >= 0, or None",
        )
        _need(self, _pos_int(self.train_layers), "train_layers", "must be an integer >= 1")
        _need(self, _finite(self.retain_scale) and self.retain_scale >= 0, "retain_scale", "must be >= 0")


@dataclass
class GAScaled(Method):
    """The control GA×(1−λ): what BS-T reduces to when its belief term carries nothing (docs/theory.md D2)."""

    name: ClassVar[str] = "ga_scaled"
    title: ClassVar[str] = "GA×(1−λ)"
    equation: ClassVar[str] = "docs/theory.md §2, D2"

    lam: float = hp(0.2, "belief weight λ of BS-T; GA×(1−λ) uses the same λ so the two compare")

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return ga_scaled_loss(logits, labels, lam=self.lam, reduction=reduction)

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.lam) and 0 <= self.lam <= 1, "lam", "must lie in [0, 1]")


@dataclass
class GATargetMatched(Method):
    """The control GA × sg(w), w = 1 − λ + λ·q_y: GA weighted per token by BS-T's own target weight, so that
    BS-T minus it is the push on the non-target top-k alone (docs/theory.md D2)."""

    name: ClassVar[str] = "ga_target_matched"
    title: ClassVar[str] = "GA×(1−λ+λ·q_y)"
    equation: ClassVar[str] = "docs/theory.md §2, D2"

    lam: float = hp(0.2, "belief weight λ of BS-T; this control takes the same λ so the two compare")
    top_k: int = hp(20, "BS-T local belief support k (top-k tokens per position)")
    temperature: float = hp(1.0, "BS-T belief temperature τ (docs/theory.md D4; the authors' code has τ = 1)")

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return ga_target_matched_loss(
            logits, labels, lam=self.lam, top_k=self.top_k, temperature=self.temperature, reduction=reduction
        )

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.lam) and 0 <= self.lam <= 1, "lam", "must lie in [0, 1]")
        _need(self, _pos_int(self.top_k), "top_k", "must be an integer >= 1 (and at most the vocabulary size)")
        _need(self, _finite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")


@dataclass
class SGA(Method):
    """The control SGA: ascent of the cross-entropy against (1 − λ)·e_y + λ·uniform (label smoothing with BS-T's
    λ), so that BS-T minus it is what the model's own top-k adds over any softening (docs/theory.md D2)."""

    name: ClassVar[str] = "sga"
    title: ClassVar[str] = "SGA"
    equation: ClassVar[str] = "docs/theory.md §2, D2"

    lam: float = hp(0.2, "belief weight λ of BS-T; this control takes the same λ so the two compare")

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return sga_loss(logits, labels, lam=self.lam, reduction=reduction)

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.lam) and 0 <= self.lam <= 1, "lam", "must lie in [0, 1]")


@dataclass
class BST(Method):
    """BS-T: ascend the cross-entropy against the soft target λ·q + (1−λ)·e_y of the model's top-k beliefs."""

    name: ClassVar[str] = "bs_t"
    title: ClassVar[str] = "BS-T"
    equation: ClassVar[str] = "Eq. (5)–(6)"

    lam: float = hp(0.2, "belief weight λ of BS-T; GA×(1−λ) uses the same λ so the two compare")
    top_k: int = hp(20, "BS-T local belief support k (top-k tokens per position)")
    temperature: float = hp(1.0, "BS-T belief temperature τ (docs/theory.md D4; the authors' code has τ = 1)")

    @property
    def top_k_for_logging(self) -> int:
        return self.top_k

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        return bs_t_loss(
            logits, labels, lam=self.lam, top_k=self.top_k, temperature=self.temperature, reduction=reduction
        )  # Eq. (5)-(6)

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.lam) and 0 <= self.lam <= 1, "lam", "must lie in [0, 1]")
        _need(self, _pos_int(self.top_k), "top_k", "must be an integer >= 1 (and at most the vocabulary size)")
        _need(self, _finite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")


BS_S_BASES = ("bs_t", "ga", "npo", "wga")


@dataclass
class BSS(Method):
    """BS-S: the base loss on the forget answers and on N high-confidence answers the model itself samples."""

    name: ClassVar[str] = "bs_s"
    title: ClassVar[str] = "BS-S"
    equation: ClassVar[str] = "Eq. (7)"

    lam_bss: float = hp(0.5, "BS-S weight λ_BSS of the belief term (authors: 0.5)")
    base: str = hp("bs_t", "BS-S base loss L_base: bs_t (the paper's best) | ga (the authors' class) | npo | wga")
    lam: float = hp(0.2, "belief weight λ of BS-T; GA×(1−λ) uses the same λ so the two compare")
    top_k: int = hp(20, "BS-T local belief support k (top-k tokens per position)")
    temperature: float = hp(1.0, "BS-T belief temperature τ (docs/theory.md D4; the authors' code has τ = 1)")
    base_beta: float | None = hp(None, "β of an NPO or WGA base (None: that method's default, 0.1 / 1.0)")
    n_beliefs: int = hp(3, "BS-S global beliefs N per forget prompt")
    regime: str = hp("off_policy", "BS-S: off_policy (sampled once from θ_o) | on_policy (resampled)")
    refresh_epochs: float = hp(1.0, "BS-S on-policy refresh period R, in epochs (0: every step)")
    select: str = hp("sample", "BS-S belief decoding: sample | filter (best N of M by mean log-prob) | beam")
    belief_candidates: int | None = hp(None, "BS-S candidates M >= N for select=filter (default 2N) or beam")
    belief_temperature: float = hp(1.0, "BS-S sampling temperature τ_s")
    belief_top_p: float = hp(1.0, "BS-S nucleus top-p of the sampled beliefs")
    belief_max_new_tokens: int = hp(64, "BS-S longest sampled belief, in tokens")
    belief_microbatch: int = hp(8, "BS-S belief rows per forward/backward (bounds memory as N grows)")
    share_prefix: bool = hp(False, "BS-S: each forget prompt once, its answers as branches over it (same loss)")
    belief_subsample: int | None = hp(None, "BS-S: m of each item's N beliefs per step, weighted N/m (None: all N)")

    @property
    def base_method(self) -> Method:
        """The base loss as a declaration, with this method's hyper-parameters."""
        if self.base == "bs_t":
            return BST(lam=self.lam, top_k=self.top_k, temperature=self.temperature)
        if self.base == "npo":
            return NPO() if self.base_beta is None else NPO(beta=self.base_beta)
        if self.base == "wga":
            return WGA() if self.base_beta is None else WGA(beta=self.base_beta)
        return GA()

    @property
    def needs_reference(self) -> bool:
        return self.base_method.needs_reference

    @property
    def top_k_for_logging(self) -> int:
        return self.top_k

    @property
    def belief_sampling(self) -> BeliefSampling:
        """The sampling settings of ``bs_ref.beliefs``, spelled there without the ``belief_`` prefixes."""
        decoding = dict(n=self.n_beliefs, select=self.select, m=self.belief_candidates)
        decoding.update(temperature=self.belief_temperature, top_p=self.belief_top_p)
        when = dict(regime=self.regime, refresh_epochs=self.refresh_epochs)
        return BeliefSampling(**when, **decoding, max_new_tokens=self.belief_max_new_tokens)

    def _base_kwargs(self) -> dict[str, Any]:
        """The base loss's keyword arguments (its declaration's fields but γ)."""
        base = self.base_method
        return {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "gamma"}

    def forget_loss(self, logits, labels, ref_logprobs=None, reduction="row"):
        """L_base on the forget rows alone (what Eq. 7 reduces to without beliefs)."""
        return self.base_method.forget_loss(logits, labels, ref_logprobs, reduction)

    def supports_reduction(self, reduction: str) -> bool:
        """Prefix sharing and belief subsampling weigh whole rows: the "row" reduction only."""
        return reduction == "row" or (reduction == "token" and not self.share_prefix and self.belief_subsample is None)

    def forget_terms(self, forget_batch: dict, belief_batch: dict | None = None, reduction: str = "row") -> list:
        """Eq. (7), (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u), as the runner's row sets (``bs_ref.runner``).

        The belief rows run in chunks of ``belief_microbatch`` rows, each scored by ``belief_piece`` (a chunk's share
        of L_base(D̂_u), reduced as ``reduction`` says: "token" is a token mean over the forget rows and another over
        all belief rows). ``belief_subsample=m`` keeps m of each item's beliefs, drawn here (once per micro-step),
        each row weighted N_i/m_i and scored by ``weighted_row_piece`` (unbiased; proof in ``bs_ref.prefix``).
        ``share_prefix`` packs every forget row with its belief rows over their shared prompt: one row set whose
        rows carry Eq. (7)'s weights themselves, (1 − λ_BSS)/B and λ_BSS/R."""
        rows, tokens = belief_counts(belief_batch["labels"]) if belief_batch is not None else (0, 0)
        if rows == 0:  # no usable belief (none cached, or every sampled answer empty): the forget term alone
            return [ForgetTerm(forget_batch, 1.0, self.forget_loss, {"reduction": reduction})]
        if (self.share_prefix or self.belief_subsample is not None) and reduction != "row":
            raise ValueError(
                f"{self.spec()} weighs whole rows (share_prefix / belief_subsample): it has the 'row' reduction "
                f"only, not {reduction!r}"
            )
        base = {"base": self.base, **self._base_kwargs()}  # the base loss and its hyper-parameters
        if self.share_prefix:  # one row set; its rows carry Eq. (7)'s weights themselves
            forget_rows = prefix.forget_rows(forget_batch, 1.0 - self.lam_bss)
            packed = forget_rows + self._belief_rows(belief_batch, self.lam_bss)
            return [ForgetTerm(packed, 1.0, weighted_row_piece, base, self.belief_microbatch, share_prefix=True)]
        if self.belief_subsample is not None:
            beliefs, belief_loss = self._belief_rows(belief_batch, 1.0), weighted_row_piece
        else:
            beliefs, belief_loss = belief_batch, belief_piece
            base.update(rows_with_answer=rows, answer_tokens=tokens, reduction=reduction)
        return [  # Eq. (7): (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u)
            ForgetTerm(forget_batch, 1.0 - self.lam_bss, self.forget_loss, {"reduction": reduction}),
            ForgetTerm(beliefs, self.lam_bss, belief_loss, base, self.belief_microbatch),
        ]

    def _belief_rows(self, belief_batch: dict, weight: float) -> list[prefix.Row]:
        """The belief rows with an answer, weighted to add up to weight·L_base(D̂_u) (``bs_ref.prefix.belief_rows``;
        ``belief_subsample`` draws from ``subsample_generator``)."""
        return prefix.belief_rows(belief_batch, weight, self.belief_subsample, self.subsample_generator)

    def seed_subsample(self, seed: int) -> None:
        """Seed the draws of ``belief_subsample`` (their own ``torch.Generator``; the global RNG is never used). The
        loop calls it with ``seed + process_index``; unseeded, the draws start from seed 0."""
        self._subsample_generator = torch.Generator().manual_seed(int(seed))

    @property
    def subsample_generator(self) -> torch.Generator:
        """The generator of the belief-subsampling draws (``seed_subsample``)."""
        if getattr(self, "_subsample_generator", None) is None:
            self.seed_subsample(0)
        return self._subsample_generator

    def validate(self) -> None:
        super().validate()
        _need(self, _finite(self.lam_bss) and 0 <= self.lam_bss <= 1, "lam_bss", "must lie in [0, 1]")
        _need(self, self.base in BS_S_BASES, "base", f"choose one of {', '.join(BS_S_BASES)}")
        _need(
            self,
            self.base_beta is None or self.base in ("npo", "wga"),
            "base_beta",
            f"only an npo or wga base has a β (base is {self.base!r}); drop base_beta",
        )
        _need(
            self,
            self.base_beta is None or (_finite(self.base_beta) and self.base_beta >= 0),
            "base_beta",
            "must be a number >= 0 (> 0 for npo)",
        )
        try:
            self.base_method.validate()
        except ValueError as error:  # a base's β is BS-S's base_beta; its λ, k, τ are BS-S's own fields
            hint = " (set it through bs_s:base_beta)" if ":beta=" in str(error) else ""
            raise ValueError(f"bs_s base: {error}{hint}") from None
        _need(self, _pos_int(self.n_beliefs), "n_beliefs", "must be an integer >= 1")
        _need(self, self.regime in REGIMES, "regime", f"choose one of {', '.join(REGIMES)}")
        _need(
            self,
            _finite(self.refresh_epochs) and self.refresh_epochs >= 0,
            "refresh_epochs",
            "must be >= 0 (0: every step)",
        )
        _need(self, self.select in SELECT_MODES, "select", f"choose one of {', '.join(SELECT_MODES)}")
        _need(
            self,
            self.belief_candidates is None
            or (_pos_int(self.belief_candidates) and self.belief_candidates >= self.n_beliefs),
            "belief_candidates",
            "must be an integer >= n_beliefs, or None",
        )
        _need(
            self, _finite(self.belief_temperature) and self.belief_temperature > 0, "belief_temperature", "must be > 0"
        )
        _need(self, _finite(self.belief_top_p) and 0 < self.belief_top_p <= 1, "belief_top_p", "must lie in (0, 1]")
        _need(self, _pos_int(self.belief_max_new_tokens), "belief_max_new_tokens", "must be an integer >= 1")
        _need(self, _pos_int(self.belief_microbatch), "belief_microbatch", "must be an integer >= 1")
        _need(self, isinstance(self.share_prefix, bool), "share_prefix", "must be True or False")
        _need(
            self,
            self.belief_subsample is None or _pos_int(self.belief_subsample),
            "belief_subsample",
            "must be an integer >= 1 (beliefs per item per step), or None (all N)",
        )


# -------------------------------------------------------------------------------------------------------------
# The registry and the method-spec language
# -------------------------------------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (GA, GradDiff, NPO, SimNPO, WGA, RMU, GAScaled, GATargetMatched, SGA, BST, BSS)
}
"""Every method by its name, in the order tables list them."""

ALIASES = {"tau": "temperature", "lambda": "lam", "n": "n_beliefs"}
"""Short names accepted in a method spec (``bs_t:tau=2``)."""


def make_method(name: str, **hyperparameters: Any) -> Method:
    """The declaration of ``name`` with the given hyper-parameters (the rest at their defaults), validated."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyper-parameter {', '.join(unknown)}; it has {', '.join(sorted(known))}"
        )
    method = cls(**hyperparameters)
    method.validate()
    return method


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"bs_t:temperature=2,lam=0.6"`` -> ``("bs_t", {"temperature": 2.0, "lam": 0.6})`` (values typed by the
    field's default; aliases resolved). Raises one ValueError naming the spec and the fix."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in METHODS:
        raise ValueError(
            f"unknown method {name!r} in {spec!r}; choose one of {', '.join(METHODS)} "
            "(optionally with hyper-parameters, e.g. bs_t:temperature=2,lam=0.6)"
        )
    fields = {f.name: f for f in dataclasses.fields(METHODS[name])}
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))) if rest else ():
        key, eq, text = part.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        if not eq or key not in fields:
            raise ValueError(
                f"bad hyper-parameter {part!r} in {spec!r}; write key=value with a key among "
                f"{', '.join(sorted(fields))}"
            )
        values[key] = parse_value(text.strip(), fields[key].default, f"{spec!r}: {key}")
    return name, values


def method_from_spec(spec: str, **defaults: Any) -> Method:
    """The declaration a spec names. ``defaults`` are run-wide hyper-parameters (e.g. ``lam`` from ``--lam``)
    applied to every method that has such a field; the spec's own values win."""
    name, values = parse_spec(spec)
    own = {f.name for f in dataclasses.fields(METHODS[name])}
    return make_method(name, **{**{k: v for k, v in defaults.items() if k in own}, **values})


def parse_value(text: str, default: Any, where: str) -> Any:
    """A spec value typed like the field's default (None/none for optional fields)."""
    if text in ("None", "none"):
        return None
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int) or (default is None and text.lstrip("+-").isdigit()):
        try:
            return int(text)
        except ValueError:
            pass
    if isinstance(default, (int, float)) or default is None:
        try:
            return float(text)
        except ValueError:
            if default is not None:
                raise ValueError(f"{where}: expected a number, got {text!r}") from None
    return text


def hyperparameters() -> dict[str, dict[str, Any]]:
    """Every hyper-parameter name over all declarations: ``{name: {"default", "help", "methods"}}``, for the
    command line. A name several methods share with one default (``lam``, ``top_k``, ``temperature``) is one
    run-wide setting (``"shared": True``); a name whose default differs between methods (``beta``, ``gamma``)
    has ``"shared": False`` (its ``"default"`` is the first method's) — set it per method in a spec
    (``npo:beta=0.2``)."""
    out: dict[str, dict[str, Any]] = {}
    for cls in METHODS.values():
        for f in dataclasses.fields(cls):
            entry = out.setdefault(
                f.name, {"default": f.default, "help": f.metadata.get("help", ""), "methods": [], "shared": True}
            )
            entry["methods"].append(cls.name)
            if entry["default"] != f.default:
                entry["shared"] = False
    return out


# -------------------------------------------------------------------------------------------------------------


def _decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (``model.layers`` of a Llama-type model, also under a peft or DDP wrapper):
    the first non-empty ``ModuleList`` named ``layers``."""
    for name, module in getattr(model, "module", model).named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module):
            return module
    raise ValueError(f"no decoder layers (a ModuleList named 'layers') in {type(model).__name__}")


def _need(method: Method, ok: bool, name: str, rule: str) -> None:
    if not ok:
        raise ValueError(f"{method.name}:{name}={getattr(method, name)!r} is invalid: {rule}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _pos_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _format(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

"""Learning-dynamics tools: one SGD step, the softmax Jacobian A, the empirical NTK K, the residual G.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Lemma 5.1, after
Ren & Sutherland, "Learning Dynamics of LLM Finetuning", ICLR 2025. For one SGD step on a loss L of the
"unlearn" input χ_u, θ' = θ − η ∇_θ L(χ_u), the log-probabilities on an "observed" input χ_o move by

    Δ log π(·|χ_o) = −η · A(χ_o) · K(χ_o, χ_u) · G(χ_u) + O(η²)                  (Lemma 5.1)

    A = ∂ log softmax(z) / ∂z = I − 1·πᵀ      [V, V] at every position (A[i, j] = δ_ij − π_j)
    K = ∇_θ z(χ_o) · ∇_θ z(χ_u)ᵀ              [M_o, M_u], the empirical NTK (M = positions · V)
    G = ∇_z L(χ_u)                            [M_u], the logit residual of the loss being MINIMISED

Sign convention: L is always the scalar the optimiser minimises (bs_ref.losses). For gradient ascent
(L = −NLL) this makes G = e_y − π, i.e. minus the cross-entropy residual π − e_y of the paper's
Theorem 5.2.

Everything takes a *functional* model ``model_fn(params, x) -> logits`` with ``params`` a dict of tensors
(``module_fn(model)`` builds one from an ``nn.Module`` with ``torch.func.functional_call``), so the same
measurements run on free logits, the toy models of ``proofs_check`` and Hugging Face LLMs. Every function
that touches parameters takes ``names``: the parameter subset the step updates and the NTK is taken over
(exact names or ``fnmatch`` patterns, e.g. ``["model.layers.3.mlp.*"]``); the rest is frozen.

Example (any causal LM; a parameter subset keeps K small)::

    from bs_ref.analysis.dynamics import module_fn, one_step_change, linearised_change, first_order_check
    from bs_ref.losses import ga_loss, sequence_logprob
    fn, params = module_fn(model)                      # model in float64 for a clean O(η²) check
    x_u, x_o = {"input_ids": ids_u}, {"input_ids": ids_o}
    args = (fn, params, x_u, lambda z: ga_loss(z, labels_u), x_o, lambda z: sequence_logprob(z, labels_o))
    names = ["model.layers.3.mlp.*"]
    check = first_order_check(lambda eta: one_step_change(*args, eta, names),
                              lambda eta: linearised_change(*args, eta, names))
    check.ratio, check.bounded                         # error/η² at η = 1e-2, 1e-3, 1e-4

Precision: Hugging Face Llama-family models compute RMSNorm in float32 even when the model is float64, so
parameters upstream of a norm carry ~1e-7 relative rounding into every measured change: pass
``first_order_check(..., atol=...)`` accordingly, or check on parameters after the last norm (``lm_head``,
``model.norm.weight``), which stay exact in float64.

Cost: ``empirical_ntk`` materialises the Jacobians [M, P] (toy models, or an LLM restricted to a few
outputs via ``outputs=`` and a small parameter subset). ``linearised_change`` gives the first-order
change −η·K·G through one forward-mode product (K·G = ∇_θ z(χ_o)·∇_θ L(χ_u)) without ever forming K;
use it on real LLMs.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, jacrev, jvp

Params = dict[str, torch.Tensor]
ModelFn = Callable[[Params, object], torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# A and G
# ----------------------------------------------------------------------------------------------------


def _check_probs(p: torch.Tensor, name: str = "p") -> None:
    if not isinstance(p, torch.Tensor) or not p.is_floating_point() or p.dim() < 1:
        raise ValueError(f"{name} must be a floating-point tensor of probabilities [..., V], got {type(p)}")
    tol = 1e-4 if p.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    if bool((p < -tol).any()) or not bool(torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype), atol=tol)):
        raise ValueError(f"{name} must be probability vectors along the last dim (>= 0, summing to 1); pass softmax(z)")


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """A = ∂ log softmax(z)/∂z = I − 1·pᵀ, shape [..., V, V] for p [..., V].

    Row i is the gradient of log p_i: A[..., i, j] = δ_ij − p_j. (The Jacobian of p itself is diag(p)·A.)
    """
    _check_probs(p)
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    return eye - p.unsqueeze(-2)  # Lemma 5.1: A = I − 1·πᵀ


def apply_softmax_jacobian(p: torch.Tensor, delta_logits: torch.Tensor) -> torch.Tensor:
    """A·Δz = Δz − (pᵀΔz)·1 at every position, without forming the [V, V] matrix. Shapes [..., V]."""
    if p.shape != delta_logits.shape:
        raise ValueError(f"p {tuple(p.shape)} and delta_logits {tuple(delta_logits.shape)} must have the same shape")
    return delta_logits - (p * delta_logits).sum(-1, keepdim=True)


def logit_residual(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """G = ∇_z L: the gradient of the scalar ``loss_fn(logits)`` with respect to the logits (autograd).

    Same shape as ``logits``. For L = −NLL (gradient ascent) on a label y this is e_y − softmax(z).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor")
    with torch.enable_grad():  # also inside a caller's torch.no_grad()
        z = logits.detach().clone().requires_grad_(True)
        loss = loss_fn(z)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor (the loss to minimise)")
        if not loss.requires_grad:
            return torch.zeros_like(z)
        (grad,) = torch.autograd.grad(loss, z, allow_unused=True)
    return torch.zeros_like(z) if grad is None else grad


# ----------------------------------------------------------------------------------------------------
# Functional models, parameter subsets, the empirical NTK K
# ----------------------------------------------------------------------------------------------------


def module_fn(model: torch.nn.Module) -> tuple[ModelFn, Params]:
    """(model_fn, params) for an ``nn.Module``: ``model_fn(params, x)`` calls the module with ``params``.

    ``x`` is passed as the single positional argument; a dict ``x`` is passed as keyword arguments (HF
    models: ``{"input_ids": ..., "attention_mask": ...}``). Models returning an object with ``.logits``
    (Hugging Face) yield the logits tensor. The returned params are detached copies of the module's
    parameters (buffers stay in the module).
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model)}")

    def fn(params: Params, x: object) -> torch.Tensor:
        out = functional_call(model, params, kwargs=x) if isinstance(x, dict) else functional_call(model, params, (x,))
        return out.logits if hasattr(out, "logits") else out

    return fn, {n: p.detach() for n, p in model.named_parameters()}


def select_names(params: Params, names: Iterable[str] | None = None) -> list[str]:
    """The parameter names selected by ``names`` (exact names or fnmatch patterns); all when None."""
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict {name: tensor}")
    if names is None:
        return list(params)
    if isinstance(names, str):
        names = [names]
    chosen: list[str] = []
    for pattern in names:
        hits = [n for n in params if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            some = ", ".join(list(params)[:8])
            raise ValueError(f"parameter name/pattern {pattern!r} matches no parameter; names look like: {some} ...")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _split(params: Params, names: Iterable[str] | None) -> tuple[Params, Params]:
    chosen = select_names(params, names)
    trainable = {n: params[n] for n in chosen}
    frozen = {n: v for n, v in params.items() if n not in trainable}
    return trainable, frozen


def _flat(out: torch.Tensor) -> torch.Tensor:
    return out.reshape(-1)


def logit_jacobian(
    model_fn: ModelFn,
    params: Params,
    x: object,
    names: Iterable[str] | None = None,
    outputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """∇_θ z(x) as a matrix [M, P]: M = number of (selected) logits, P = size of the parameter subset.

    ``outputs`` maps the model's logits to the ones wanted (e.g. ``lambda z: z[0, 3:5]``); default all.
    """
    trainable, frozen = _split(params, names)
    pick = outputs or (lambda z: z)

    def flat_logits(tr: Params) -> torch.Tensor:
        return _flat(pick(model_fn({**frozen, **tr}, x)))

    jac = jacrev(flat_logits)(trainable)  # {name: [M, *shape]}, computed with vmap'ed reverse mode
    return torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], dim=1)


def empirical_ntk(
    model_fn: ModelFn,
    params: Params,
    x_o: object,
    x_u: object,
    names: Iterable[str] | None = None,
    outputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """K(χ_o, χ_u) = ∇_θ z(χ_o) · ∇_θ z(χ_u)ᵀ, shape [M_o, M_u] (logits flattened in row-major order).

    Taken over the parameter subset ``names`` (all parameters when None). Free logits (params = {"z": z},
    model_fn returns params["z"]) give K = I.
    """
    j_o = logit_jacobian(model_fn, params, x_o, names, outputs)
    j_u = logit_jacobian(model_fn, params, x_u, names, outputs)
    return j_o @ j_u.T  # Lemma 5.1: K = ∇_θ z(χ_o) ∇_θ z(χ_u)ᵀ


def akg_change(p_o: torch.Tensor, ntk: torch.Tensor, residual: torch.Tensor, lr: float) -> torch.Tensor:
    """Lemma 5.1's first-order change of log π at every observed position and token: −η·A·K·G.

    p_o [..., V] the observed distributions (M_o = p_o.numel()), ntk [M_o, M_u], residual G [M_u] or any
    shape with M_u elements. Returns [..., V]: entry (i, v) is the predicted Δ log π_i[v].
    """
    if ntk.dim() != 2 or ntk.shape[0] != p_o.numel() or ntk.shape[1] != residual.numel():
        raise ValueError(
            f"ntk must be [M_o, M_u] = [{p_o.numel()}, {residual.numel()}] for p_o {tuple(p_o.shape)} and "
            f"residual {tuple(residual.shape)}, got {tuple(ntk.shape)}"
        )
    delta_logits = (-lr * (ntk @ residual.reshape(-1).to(ntk.dtype))).reshape(p_o.shape)  # −η K G
    return apply_softmax_jacobian(p_o, delta_logits)  # Lemma 5.1: −η A K G


# ----------------------------------------------------------------------------------------------------
# One SGD step: measured and first-order changes
# ----------------------------------------------------------------------------------------------------


def parameter_gradient(
    model_fn: ModelFn,
    params: Params,
    x_u: object,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    names: Iterable[str] | None = None,
) -> Params:
    """∇_θ L(χ_u) over the subset ``names``, L = loss_fn(model_fn(θ, χ_u)) (a scalar to minimise)."""
    trainable, frozen = _split(params, names)
    with torch.enable_grad():
        leaves = {n: v.detach().clone().requires_grad_(True) for n, v in trainable.items()}
        loss = loss_fn(model_fn({**frozen, **leaves}, x_u))
        return sgd_gradients(leaves, loss)


def sgd_gradients(params: Params, loss: torch.Tensor) -> Params:
    """Gradients of ``loss`` with respect to the leaf tensors in ``params`` (zero where unused)."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("loss must be a scalar tensor")
    tensors = list(params.values())
    if not all(t.requires_grad for t in tensors):
        missing = [n for n, t in params.items() if not t.requires_grad]
        raise ValueError(f"params {missing[:4]} do not require grad; build the loss from tensors with requires_grad")
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(params.items(), grads)}


def sgd_step(params: Params, loss: torch.Tensor, lr: float, names: Iterable[str] | None = None) -> Params:
    """θ' = θ − η ∇_θ L for the subset ``names`` (those tensors must require grad and build ``loss``).

    Returns a new dict of detached tensors; the other parameters are passed through unchanged.
    """
    chosen = select_names(params, names)
    grads = sgd_gradients({n: params[n] for n in chosen}, loss)
    return {n: (v - lr * grads[n]).detach() if n in grads else v.detach() for n, v in params.items()}


def one_step_change(
    model_fn: ModelFn,
    params: Params,
    x_u: object,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x_o: object,
    probe: Callable[[torch.Tensor], torch.Tensor],
    lr: float,
    names: Iterable[str] | None = None,
) -> torch.Tensor:
    """Measured Δ probe(z(χ_o)) after one SGD step θ' = θ − η ∇_θ loss_fn(z(χ_u)) on the subset ``names``.

    ``probe`` maps logits of χ_o to what is tracked, e.g. ``lambda z: sequence_logprob(z, labels_o)``.
    """
    grads = parameter_gradient(model_fn, params, x_u, loss_fn, names)
    stepped = {**params, **{n: params[n] - lr * g for n, g in grads.items()}}
    with torch.no_grad():
        return probe(model_fn(stepped, x_o)) - probe(model_fn(params, x_o))


def linearised_change(
    model_fn: ModelFn,
    params: Params,
    x_u: object,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x_o: object,
    probe: Callable[[torch.Tensor], torch.Tensor],
    lr: float,
    names: Iterable[str] | None = None,
) -> torch.Tensor:
    """First-order prediction of ``one_step_change``: ∂probe/∂θ · (−η ∇_θ L), one forward-mode product.

    With ``probe`` = log-probabilities this equals Lemma 5.1's −η·A·K·G (the chain rule through z(χ_o)
    with K·G = ∇_θ z(χ_o)·∇_θ L(χ_u)), computed without forming K — the way to check Lemma 5.1 on an LLM.
    Where an operator has no forward-mode derivative (e.g. PyTorch's CPU flash attention behind
    ``attn_implementation="sdpa"``), it falls back to reverse mode: one backward pass per probe output,
    so keep the probe small (a scalar such as log π(y_o|χ_o) costs one).
    """
    grads = parameter_gradient(model_fn, params, x_u, loss_fn, names)
    trainable, frozen = _split(params, list(grads))
    direction = {n: -lr * grads[n] for n in trainable}

    def probed(tr: Params) -> torch.Tensor:
        return probe(model_fn({**frozen, **tr}, x_o))

    try:
        _, tangent = jvp(probed, (trainable,), (direction,))
    except (NotImplementedError, RuntimeError) as exc:
        if "forward AD" not in str(exc) and "forward-mode" not in str(exc):
            raise
        tangent = _reverse_mode_product(probed, trainable, direction)
    return tangent


def _reverse_mode_product(probed: Callable[[Params], torch.Tensor], at: Params, direction: Params) -> torch.Tensor:
    """∂probed/∂θ · direction by reverse mode, one backward pass per output entry."""
    with torch.enable_grad():
        leaves = {n: v.detach().clone().requires_grad_(True) for n, v in at.items()}
        out = probed(leaves)
        flat = out.reshape(-1)
        values = []
        for i in range(flat.numel()):
            grads = torch.autograd.grad(flat[i], list(leaves.values()), retain_graph=True, allow_unused=True)
            values.append(sum((g * direction[n]).sum() for n, g in zip(leaves, grads) if g is not None))
    return torch.stack([torch.as_tensor(v, dtype=out.dtype) for v in values]).reshape(out.shape).detach()


@dataclass
class FirstOrderCheck:
    """error = |measured − predicted| (max over entries) per step size; ratio = error/η².

    bounded: ratio stayed within ``growth`` × its value at the largest η (errors below ``atol`` count as
    zero), i.e. the error is O(η²) as docs/theory.md §5 defines "first order". order: log-log slope of the error
    between the largest and smallest η (≈ 2 for a generic second-order remainder; larger when it vanishes).
    """

    etas: list[float]
    measured: list[float]
    predicted: list[float]
    error: list[float]
    ratio: list[float]
    order: float
    bounded: bool
    growth: float = 4.0
    atol: float = 0.0
    extra: dict = field(default_factory=dict)


def _as_tensor(v: object) -> torch.Tensor:
    return v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)


def first_order_check(
    measure: Callable[[float], object],
    predict: Callable[[float], object],
    etas: Sequence[float] = (1e-2, 1e-3, 1e-4),
    growth: float = 4.0,
    atol: float = 0.0,
) -> FirstOrderCheck:
    """Check measured − predicted = O(η²): the ratio error/η² must stay bounded as η shrinks 10×, 100×.

    ``measure(eta)`` and ``predict(eta)`` return a number or a tensor (compared entry-wise, max abs).
    ``atol`` is the numerical floor of the measurement (e.g. ~1e-6 for float32 log-probs of an LLM).
    """
    etas = [float(e) for e in etas]
    if len(etas) < 2 or any(e <= 0 for e in etas) or sorted(etas, reverse=True) != etas:
        raise ValueError(f"etas must be >= 2 positive step sizes in decreasing order, got {etas}")
    if growth < 1:
        raise ValueError(f"growth must be >= 1, got {growth}")
    measured, predicted, error = [], [], []
    for eta in etas:
        m, p = _as_tensor(measure(eta)), _as_tensor(predict(eta))
        if m.shape != p.shape:
            raise ValueError(f"measure and predict disagree in shape: {tuple(m.shape)} vs {tuple(p.shape)}")
        measured.append(float(m.abs().max()) if m.dim() else float(m))
        predicted.append(float(p.abs().max()) if p.dim() else float(p))
        error.append(float((m - p).abs().max()))
    ratio = [e / eta**2 for e, eta in zip(error, etas)]
    ref = ratio[0]
    bounded = all(e <= growth * ref * eta**2 + atol for e, eta in zip(error, etas))
    lo, hi = max(error[-1], 1e-300), max(error[0], 1e-300)
    order = math.log(hi / lo) / math.log(etas[0] / etas[-1])
    return FirstOrderCheck(etas, measured, predicted, error, ratio, order, bounded, growth, atol)


# ----------------------------------------------------------------------------------------------------
# Squeezing probes
# ----------------------------------------------------------------------------------------------------


def top_non_target(p: torch.Tensor, target: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, probability) of y* = argmax_{v≠ȳ} p_v, for p [..., V] and target ȳ (int or [...] ids)."""
    if p.shape[-1] < 2:
        raise ValueError("p needs at least two labels to have a non-target one")
    target = torch.as_tensor(target, device=p.device).long()
    masked = p.clone()
    masked.scatter_(-1, target.expand(p.shape[:-1]).unsqueeze(-1), float("-inf"))
    prob, idx = masked.max(dim=-1)
    return idx, prob


def squeeze_probe(p_before: torch.Tensor, p_after: torch.Tensor, target: int) -> dict[str, float]:
    """What one step did to a distribution [V]: the target ȳ, the top non-target y*, and who gained.

    gain_threshold: the smallest before-probability among non-target labels that gained; squeezed_mass:
    probability mass moved onto y* relative to the other non-targets (log-share change of y*).
    """
    if p_before.dim() != 1 or p_before.shape != p_after.shape:
        raise ValueError("p_before and p_after must be distributions of the same shape [V]")
    idx, p_star = top_non_target(p_before, target)
    star = int(idx)
    others = torch.ones_like(p_before, dtype=torch.bool)
    others[target] = False
    gained = (p_after > p_before) & others
    share_before = p_star / p_before[others].sum()
    share_after = p_after[star] / p_after[others].sum()
    return {
        "target": int(target),
        "p_target_before": float(p_before[target]),
        "p_target_after": float(p_after[target]),
        "top_other": star,
        "p_top_other_before": float(p_star),
        "p_top_other_after": float(p_after[star]),
        "dlog_top_other": float(torch.log(p_after[star]) - torch.log(p_star)),
        "dlog_share_top_other": float(torch.log(share_after) - torch.log(share_before)),
        "n_gained": int(gained.sum()),
        "gain_threshold": float(p_before[gained].min()) if bool(gained.any()) else float("nan"),
    }


def band_logprob(seq_logprobs: torch.Tensor, band: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """log Σ_{s∈band} π(s): the log-mass of a band of sequences (e.g. the top beliefs) from their log-probs."""
    band = torch.as_tensor(band, device=seq_logprobs.device).long()
    if band.numel() == 0:
        raise ValueError("band must name at least one sequence")
    return torch.logsumexp(seq_logprobs[..., band], dim=-1)


__all__ = [
    "FirstOrderCheck",
    "akg_change",
    "apply_softmax_jacobian",
    "band_logprob",
    "empirical_ntk",
    "first_order_check",
    "linearised_change",
    "logit_jacobian",
    "logit_residual",
    "module_fn",
    "one_step_change",
    "parameter_gradient",
    "select_names",
    "sgd_gradients",
    "sgd_step",
    "softmax_jacobian",
    "squeeze_probe",
    "top_non_target",
]

"""L5.1, T5.2, T5.3: the paper's learning-dynamics statements, checked against autograd.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Lemma 5.1, Theorem 5.2,
Theorem 5.3. Conventions of ``bs_ref.analysis.dynamics``: L is the minimised loss, G = ∇_z L, and one SGD step gives

    Δ log π(y_o|χ_o) = −η·A·K·G + O(η²),   A = I − 1·πᵀ,   K = ∇_θ z(χ_o)∇_θ z(χ_u)ᵀ      (Lemma 5.1)

"First order" is checked as docs/theory.md §1 defines it: error/η² stays bounded while η shrinks 10×, 100×
(``bs_ref.analysis.dynamics.first_order_check``, float64).

T5.2 is stated for the cross-entropy residual: ∂CE(t, p)/∂z = p − t, so G_GA = p − e_y and
G_BST = p − ((1−λ)e_y + λq), hence for v ≠ y: G_BST[v] = G_GA[v] − λ·q[v]. The paper prints +λ·q[v]
(erratum); the checker measures both signs against autograd through ``bs_ref.losses.bs_t_loss``. The
library's loss is −mean over B rows of the mean CE over each row's n answer tokens, whose logit gradient
at an answer position is −(p − t)/(B·n); the CE residual is recovered as −B·n·∇_z L.

T5.3 (off-policy BS-S, Eq. 7): with the forget row χ_u^0 = (x_u, y_u) and N fixed belief rows
χ_u^j = (x_u, ŷ^j) sampled once from θ_o, one step changes log π(y_o|χ_o) by
−η·A·Σ_m ω_m·K(χ_o, χ_u^m)·G_BST(χ_u^m), ω_0 = 1 − λ_BSS, ω_j = λ_BSS/N (+ O(η²)).
"""

from __future__ import annotations

import torch

from bs_ref.analysis.dynamics import akg_change, empirical_ntk, first_order_check, logit_residual, one_step_change
from bs_ref.losses import bs_s_combine, bs_t_loss, ga_loss, npo_loss, sequence_logprob, token_beliefs

from ._core import checker, claim
from ._util import Tally, evidence, fmt_p, gen, rnd
from .squeezing_claims import toy_case
from .toy import DTYPE, as_hf, free_logits_fn, linear_head, linear_head_fn, random_logits, token_loss_fn

claim(
    "L5.1",
    "one SGD step: Δ log π(y_o|χ_o) = −η·A·K·G + O(η²), A = I − 1·πᵀ, K = ∇_θ z(χ_o)∇_θ z(χ_u)ᵀ, G = ∇_z L",
    "Li et al. 2026, Lemma 5.1",
    "one plain SGD step; L the minimised loss; first order = error/η² bounded as η shrinks 10×, 100×",
)
claim(
    "T5.2",
    "G_GA = p − e_y; G_BST = p − ((1−λ)e_y + λq); for v ≠ y: G_BST[v] = G_GA[v] + λ·q[v] (as printed)",
    "Li et al. 2026, Theorem 5.2",
    "cross-entropy residuals ∂CE/∂z; detached top-k belief q (zero outside H_k)",
)
claim(
    "T5.3",
    "off-policy BS-S one-step change = −η·A·Σ_m ω_m K(χ_o, χ_u^m) G_BST(χ_u^m), ω_0 = 1−λ_BSS, ω_j = λ_BSS/N",
    "Li et al. 2026, Theorem 5.3",
    "beliefs sampled once from θ_o and fixed; base loss BS-T; first order in η",
)

ETAS = (1e-2, 1e-3, 1e-4)
ATOL = 1e-12  # float64 noise floor of a difference of log-probabilities (|log p| ≲ 50)


def _fo_tally(checks: list[tuple[str, object]]) -> tuple[Tally, dict]:
    tally = Tally()
    ratios, orders = [], []
    for desc, fo in checks:
        tally.add(fo.bounded, f"{desc}: error/η² = {[rnd(r, 3) for r in fo.ratio]} at η = {list(fo.etas)}")
        ratios.append(max(fo.ratio))
        if fo.error[-1] > 10 * ATOL:  # below that the error is rounding, its slope says nothing
            orders.append(fo.order)
    return tally, {
        "max error/η²": rnd(max(ratios)),
        "min log-log order": rnd(min(orders), 3) if orders else None,
        "etas": list(ETAS),
    }


# ----------------------------------------------------------------------------------------------------
# L5.1
# ----------------------------------------------------------------------------------------------------


def l51_free_instance(z: torch.Tensor, target: int, loss=ga_loss, **kwargs):
    """Lemma 5.1 on free logits (K = I): measured exact Δ log p vs −η A K G, for every label."""
    loss_fn = token_loss_fn(loss, target, **kwargs)
    params = {"z": z}
    p = torch.softmax(z, -1)
    g = logit_residual(lambda v: loss_fn(v), z)
    k = empirical_ntk(free_logits_fn, params, None, None)
    return first_order_check(
        lambda eta: one_step_change(
            free_logits_fn, params, None, loss_fn, None, lambda v: torch.log_softmax(v, -1), eta
        ),
        lambda eta: akg_change(p, k, g, eta),
        ETAS,
        atol=ATOL,
    )


def l51_head_instance(params: dict, phi: torch.Tensor, target: int, loss=ga_loss, **kwargs):
    """Lemma 5.1 on a linear head, stepping on φ_u = phi[0] and observing φ_o = phi[1]."""
    loss_fn = token_loss_fn(loss, target, **kwargs)
    phi_u, phi_o = phi[0], phi[1]
    z_u, z_o = linear_head_fn(params, phi_u), linear_head_fn(params, phi_o)
    g = logit_residual(loss_fn, z_u)
    k = empirical_ntk(linear_head_fn, params, phi_o, phi_u)
    return first_order_check(
        lambda eta: one_step_change(
            linear_head_fn, params, phi_u, loss_fn, phi_o, lambda v: torch.log_softmax(v, -1), eta
        ),
        lambda eta: akg_change(torch.softmax(z_o, -1), k, g, eta),
        ETAS,
        atol=ATOL,
    )


def ar_sequence_predictor(params, fn, x_o, labels_o, x_u_rows: list, residuals: list, weights: list):
    """η ↦ −η·A·Σ_m ω_m K(χ_o, χ_u^m)·G(χ_u^m) summed over the answer tokens of y_o: predicted Δ log π(y_o|χ_o).

    The NTKs are computed once (they do not depend on η)."""
    with torch.no_grad():
        p_o = torch.softmax(fn(params, x_o)[0], -1)
    ntks = [empirical_ntk(fn, params, x_o, x_u) for x_u in x_u_rows]
    mask = labels_o[0, 1:] != -100

    def predict(eta: float) -> torch.Tensor:
        total = sum(w * akg_change(p_o, k, g, eta) for k, g, w in zip(ntks, residuals, weights))  # Lemma 5.1 / T5.3
        return total[:-1][mask].gather(-1, labels_o[0, 1:][mask][:, None]).sum()

    return predict


def l51_ar_instance(case, observed: int, loss_name: str = "ga"):
    fn, params = case.fn_params()
    x_u = case.rows([case.target])
    x_o = case.rows([observed])
    with torch.no_grad():
        ref = sequence_logprob(fn(params, x_u["input_ids"]), x_u["labels"])

    def loss_fn(z):
        if loss_name == "npo":
            return npo_loss(z, x_u["labels"], ref + 0.5)  # θ ≠ θ_ref: NPO weight ≠ 1
        if loss_name == "bs_t":
            return bs_t_loss(z, x_u["labels"], lam=0.2, top_k=3)
        return ga_loss(z, x_u["labels"])

    def probe(z):
        return sequence_logprob(z, x_o["labels"])

    with torch.no_grad():
        z_u = fn(params, x_u["input_ids"])
    g = logit_residual(loss_fn, z_u)
    return first_order_check(
        lambda eta: one_step_change(fn, params, x_u["input_ids"], loss_fn, x_o["input_ids"], probe, eta)[0],
        ar_sequence_predictor(params, fn, x_o["input_ids"], x_o["labels"], [x_u["input_ids"]], [g], [1.0]),
        ETAS,
        atol=ATOL,
    )


@checker("L5.1", "toy_softmax")
def l51_toy_softmax(**_):
    g = gen(11)
    checks = []
    for i in range(12):
        vocab = 3 + i % 6
        z = random_logits(g, vocab, (0.5, 2.0, 5.0)[i % 3])
        target = i % vocab
        loss, kw = [(ga_loss, {}), (bs_t_loss, {"lam": 0.3, "top_k": 2})][i % 2]
        checks.append(
            (f"free logits p={fmt_p(torch.softmax(z, -1))} ȳ={target}", l51_free_instance(z, target, loss, **kw))
        )
        params, phi = linear_head(g, vocab)
        checks.append((f"linear head V={vocab}", l51_head_instance(params, phi, target, loss, **kw)))
    tally, numbers = _fo_tally(checks)
    return evidence(
        "toy_softmax", tally, "12 free-logit + 12 linear-head instances (χ_o ≠ χ_u), GA and BS-T losses", numbers
    )


@checker("L5.1", "toy_autoregressive")
def l51_toy_ar(**_):
    checks = []
    for seed in (0, 1):
        case = toy_case(seed)
        for observed, name in [(case.target, "y_u itself"), (case.band[0], "top band answer"), (case.band[-1], "band")]:
            for loss_name in ("ga", "npo", "bs_t"):
                checks.append(
                    (
                        f"ToyAR seed {seed}, {loss_name} on y_u, observe {name}",
                        l51_ar_instance(case, observed, loss_name),
                    )
                )
    tally, numbers = _fo_tally(checks)
    return evidence(
        "toy_autoregressive",
        tally,
        "ToyAR seeds 0-1 (581 params, K over all of them): step on y_u with GA/NPO/BS-T, observe y_u and band answers",
        numbers,
    )


# ----------------------------------------------------------------------------------------------------
# T5.2
# ----------------------------------------------------------------------------------------------------


def scatter_belief(z: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """The belief q over the whole vocabulary [..., V] (zero outside H_k)."""
    logz = torch.logsumexp(z, -1)
    tb = token_beliefs(z.reshape(-1, z.shape[-1]), logz.reshape(-1), top_k, temperature)
    q = torch.zeros_like(z.reshape(-1, z.shape[-1]))
    q.scatter_(-1, tb.indices, tb.belief)
    return q.reshape(z.shape)


def t52_instance(z: torch.Tensor, y: torch.Tensor, residual_ce: torch.Tensor, lam: float, top_k: int, tau: float):
    """Compare autograd's CE residual of BS-T at rows z [N, V] (labels y [N]) with the two signs of T5.2."""
    p = torch.softmax(z, -1)
    q = scatter_belief(z, top_k, tau)
    e_y = torch.nn.functional.one_hot(y, z.shape[-1]).to(z.dtype)
    g_ga = p - e_y  # Theorem 5.2: G_GA
    g_bst_formula = p - ((1 - lam) * e_y + lam * q)  # Theorem 5.2: G_BST = p − t
    not_y = 1 - e_y
    corrected = (g_ga - lam * q) * not_y  # corrected: G_BST[v] = G_GA[v] − λ q[v], v ≠ y
    printed = (g_ga + lam * q) * not_y  # as printed: + λ q[v]
    off = residual_ce * not_y
    return {
        "err_formula": float((residual_ce - g_bst_formula).abs().max()),
        "err_corrected": float((off - corrected).abs().max()),
        "err_printed": float((off - printed).abs().max()),
        "two_lambda_q": float((2 * lam * q * not_y).abs().max()),
    }


def _t52_evidence(tier: str, results: list[dict], instance: str, example: str):
    printed = Tally()
    for r in results:
        printed.add(r["err_printed"] < 1e-9, example)
    numbers = {
        "max |autograd − (p − t)|": rnd(max(r["err_formula"] for r in results)),
        "max |autograd − (G_GA − λq)| (corrected)": rnd(max(r["err_corrected"] for r in results)),
        "max |autograd − (G_GA + λq)| (printed)": rnd(max(r["err_printed"] for r in results)),
        "printed error = 2λ·max q": all(abs(r["err_printed"] - r["two_lambda_q"]) < 1e-9 for r in results),
    }
    corrected_ok = numbers["max |autograd − (G_GA − λq)| (corrected)"] < 1e-9
    return evidence(
        tier,
        printed,
        instance,
        numbers,
        correction=(
            "G_BST[v] = G_GA[v] − λ·q[v] for v ≠ y (substituting Eq. 2); "
            + ("autograd agrees to float64 precision" if corrected_ok else "autograd DISAGREES with the correction too")
        ),
    )


@checker("T5.2", "toy_softmax")
def t52_toy_softmax(**_):
    g = gen(21)
    results, example = [], None
    for i in range(60):
        vocab = 3 + i % 8
        z = random_logits(g, vocab, (0.5, 2.0, 6.0)[i % 3])
        y = int(torch.randint(vocab, (1,), generator=g))
        lam = (0.1, 0.2, 0.5, 0.9)[i % 4]
        top_k = 1 + i % vocab
        tau = (1.0, 2.0, 4.0, 0.5)[i % 4]
        logits, labels = as_hf(z, y)
        residual_ce = -logit_residual(lambda v, lb=labels, a=lam, k=top_k, t=tau: bs_t_loss(v, lb, a, k, t), logits)[
            0, 0
        ]
        r = t52_instance(z[None], torch.tensor([y]), residual_ce[None], lam, top_k, tau)
        results.append(r)
        if example is None and r["err_printed"] > 1e-3:
            q = scatter_belief(z, top_k, tau)
            v = int(torch.where(torch.arange(vocab) == y, -1.0, q).argmax())
            p = torch.softmax(z, -1)
            example = (
                f"p={fmt_p(p)}, y={y}, λ={lam}, k={top_k}, τ={tau}, v={v}: autograd G_BST[v] − G_GA[v] = "
                f"{float(residual_ce[v] - p[v]):+.4f}; printed +λq[v] = {float(lam * q[v]):+.4f}; "
                f"corrected −λq[v] = {float(-lam * q[v]):+.4f}"
            )
    return _t52_evidence(
        "toy_softmax",
        results,
        "60 free-logit instances (V 3-10, λ ∈ {0.1,0.2,0.5,0.9}, k 1..V, τ ∈ {0.5,1,2,4}); bs_t_loss by autograd",
        example,
    )


@checker("T5.2", "toy_autoregressive")
def t52_toy_ar(**_):
    results, example = [], None
    for seed in (0, 1):
        case = toy_case(seed)
        fn, params = case.fn_params()
        rows = case.rows([case.target, *case.band, 0, 1, len(case.answers) - 1])  # variable answer lengths
        with torch.no_grad():
            z = fn(params, rows["input_ids"])
        labels = rows["labels"]
        mask = labels[:, 1:] != -100
        n_per_row = mask.sum(1, keepdim=True).expand_as(mask) * mask.shape[0]  # row mean, then batch mean
        for lam, top_k, tau in [(0.2, 3, 1.0), (0.5, 2, 2.0), (0.9, 5, 4.0)]:
            grad = logit_residual(lambda v, lb=labels, a=lam, k=top_k, t=tau: bs_t_loss(v, lb, a, k, t), z)
            residual_ce = -(grad[:, :-1][mask] * n_per_row[mask][:, None].to(DTYPE))  # CE residual = −B·n·∇_z L
            r = t52_instance(z[:, :-1][mask], labels[:, 1:][mask], residual_ce, lam, top_k, tau)
            results.append(r)
            if example is None:
                example = (
                    f"ToyAR seed {seed}, λ={lam}, k={top_k}, τ={tau}: max over answer tokens of "
                    f"|autograd − printed| = {r['err_printed']:.4f} (= 2λ max q), |autograd − corrected| = "
                    f"{r['err_corrected']:.1e}"
                )
    return _t52_evidence(
        "toy_autoregressive",
        results,
        "ToyAR seeds 0-1: every answer token of 7 rows (lengths 1-3) × 3 settings of (λ, k, τ); bs_t_loss (row mean)",
        example,
    )


# ----------------------------------------------------------------------------------------------------
# T5.3
# ----------------------------------------------------------------------------------------------------


def t53_head_instance(gen_: torch.Generator, vocab: int, n_beliefs: int, lam_bss: float, lam: float, top_k: int):
    params, phi = linear_head(gen_, vocab)
    phi_u, phi_o = phi[0], phi[1]
    z_u = linear_head_fn(params, phi_u)
    y_u = int(torch.randint(vocab, (1,), generator=gen_))
    beliefs = torch.multinomial(torch.softmax(z_u, -1), n_beliefs, replacement=True, generator=gen_).tolist()
    kw = {"lam": lam, "top_k": top_k}

    def rows_logits(z):  # the forget row and the belief rows all share the input x_u
        return torch.stack([z, torch.zeros_like(z)]).unsqueeze(0).expand(len(beliefs), 2, vocab)

    belief_labels = torch.tensor([[-100, b] for b in beliefs])

    def loss_fn(z):
        forget = bs_t_loss(*as_hf(z, y_u), **kw)
        belief = bs_t_loss(rows_logits(z), belief_labels, **kw)
        return bs_s_combine(forget, belief, lam_bss)  # Eq. 7

    residuals = [logit_residual(token_loss_fn(bs_t_loss, y, **kw), z_u) for y in [y_u, *beliefs]]
    weights = [1 - lam_bss] + [lam_bss / n_beliefs] * n_beliefs  # ω_0, ω_j
    k = empirical_ntk(linear_head_fn, params, phi_o, phi_u)
    p_o = torch.softmax(linear_head_fn(params, phi_o), -1)

    def predict(eta):
        return sum(w * akg_change(p_o, k, g, eta) for w, g in zip(weights, residuals))  # Theorem 5.3

    return first_order_check(
        lambda eta: one_step_change(
            linear_head_fn, params, phi_u, loss_fn, phi_o, lambda v: torch.log_softmax(v, -1), eta
        ),
        predict,
        ETAS,
        atol=ATOL,
    )


@checker("T5.3", "toy_softmax")
def t53_toy_softmax(**_):
    g = gen(31)
    checks = []
    for i in range(10):
        vocab, n, lam_bss = 3 + i % 5, 1 + i % 4, (0.25, 0.5, 0.75)[i % 3]
        checks.append(
            (
                f"linear head V={vocab}, N={n}, λ_BSS={lam_bss}",
                t53_head_instance(g, vocab, n, lam_bss, 0.2, min(2, vocab)),
            )
        )
    tally, numbers = _fo_tally(checks)
    return evidence(
        "toy_softmax",
        tally,
        "10 linear heads; off-policy beliefs sampled once from θ_o; BS-T base (λ=0.2, k=2)",
        numbers,
    )


def t53_ar_instance(case, observed: int, lam_bss: float = 0.5, lam: float = 0.2, top_k: int = 3):
    fn, params = case.fn_params()
    forget = case.rows([case.target])
    beliefs = case.rows(case.beliefs)  # fixed top-N answers of θ_o (off-policy)
    x_o = case.rows([observed])
    kw = {"lam": lam, "top_k": top_k}
    n = len(case.beliefs)
    both = torch.cat([forget["input_ids"], beliefs["input_ids"]])

    def loss_fn(z):
        return bs_s_combine(
            bs_t_loss(z[:1], forget["labels"], **kw), bs_t_loss(z[1:], beliefs["labels"], **kw), lam_bss
        )

    def probe(z):
        return sequence_logprob(z, x_o["labels"])

    rows = [forget["input_ids"]] + [beliefs["input_ids"][j : j + 1] for j in range(n)]
    labels = [forget["labels"]] + [beliefs["labels"][j : j + 1] for j in range(n)]
    with torch.no_grad():
        residuals = [
            logit_residual(lambda v, lb=lb: bs_t_loss(v, lb, **kw), fn(params, r)) for r, lb in zip(rows, labels)
        ]
    weights = [1 - lam_bss] + [lam_bss / n] * n
    return first_order_check(
        lambda eta: one_step_change(fn, params, both, loss_fn, x_o["input_ids"], probe, eta)[0],
        ar_sequence_predictor(params, fn, x_o["input_ids"], x_o["labels"], rows, residuals, weights),
        ETAS,
        atol=ATOL,
    )


@checker("T5.3", "toy_autoregressive")
def t53_toy_ar(**_):
    checks = []
    for seed in (0, 1):
        case = toy_case(seed)
        for observed in (case.target, case.band[0], case.band[-1]):
            for lam_bss in (0.5, 0.8):
                checks.append(
                    (
                        f"ToyAR seed {seed}, observe answer {observed}, λ_BSS={lam_bss}",
                        t53_ar_instance(case, observed, lam_bss),
                    )
                )
    tally, numbers = _fo_tally(checks)
    return evidence(
        "toy_autoregressive",
        tally,
        "ToyAR seeds 0-1: BS-S (BS-T base λ=0.2, k=3), the N=3 top answers of θ_o as fixed beliefs; K per belief row",
        numbers,
    )

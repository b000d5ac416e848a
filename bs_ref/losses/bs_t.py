"""BS-T: token-level bootstrapping with the model's local beliefs.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (5)–(6).
At every answer position i, with logits z_i and p_i = softmax(z_i):

    H_k(i) = indices of the k largest logits z_i                      (local belief support)
    q_i    = sg( softmax(z_i / τ) restricted to H_k(i), renormalised ) (the belief)
    t_i    = λ·q_i + (1 − λ)·e_{y_i}                                   Eq. (5), the soft target
    CE_i   = −Σ_v t_i[v] log p_i[v]
           = (1 − λ)(−log p_i[y_i]) + λ Σ_{v∈H_k} q_i[v] (−log p_i[v])
    L_BST  = −mean_batch mean_{i∈A} CE_i                               Eq. (6), ascend the soft CE

Eq. (6) of the paper sums over tokens; the authors' code (and this file) average per sequence and then
over the batch (``reduction="token"`` gives the batch token-mean instead).

The soft target is never materialised: the belief term is a gather over the k indices, so the extra
memory is O(N·k) for N answer tokens, not the O(N·|V|) of a one-hot/target tensor. λ = 0 reproduces GA
exactly. The belief comes from the current model in the same forward pass (no reference model) and is
detached; ``detach=False`` is an ablation, not the paper's method.

Its logit residual (docs/theory.md T5.2) is ∂CE_i/∂z_i = p_i − t_i, so for v ≠ y_i: G_BST[v] = G_GA[v] − λ·q_i[v]
(the paper prints +λq; substituting its own Eq. (2) gives −).

``bs_t_loss_paper`` is the same objective written as the paper prints it — a dense soft target t_i over the
whole vocabulary — for reading and for the tests; ``bs_t_loss`` is the fast form used everywhere else.

Shapes: logits [B, T, V], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import (
    AnswerTokens,
    answer_mean,
    answer_tokens,
    check_fraction,
    check_positive,
    check_reduction,
    dense_answers,
    reduce_tokens,
)


class TokenBeliefs(NamedTuple):
    """Local beliefs at N positions (all detached): support H_k, belief q, and the top-k mass S_k."""

    indices: torch.Tensor  # [N, k] token ids of the k largest logits
    logits: torch.Tensor  # [N, k] those logits
    belief: torch.Tensor  # [N, k] q = softmax(z_topk / τ)
    topk_mass: torch.Tensor  # [N] S_k = Σ_{v∈H_k} p[v] under the model (τ = 1)


def check_top_k(top_k: int, vocab: int) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be an integer in [1, {vocab}] (the vocabulary size), got {top_k!r}")


@torch.no_grad()
def token_beliefs(logits: torch.Tensor, logz: torch.Tensor, top_k: int = 20, temperature: float = 1.0) -> TokenBeliefs:
    """Top-k local beliefs of rows of ``logits`` [N, V] whose log-normaliser is ``logz`` [N] (no gradient)."""
    check_top_k(top_k, logits.shape[-1])
    check_positive(temperature, "temperature")
    top_logits, top_idx = logits.topk(top_k, dim=-1)  # H_k(i)
    belief = torch.softmax(top_logits / temperature, dim=-1)  # q_i, renormalised over H_k(i)
    topk_mass = (top_logits - logz[:, None]).exp().sum(-1)  # S_k
    return TokenBeliefs(top_idx, top_logits, belief, topk_mass)


def local_beliefs(
    logits: torch.Tensor, labels: torch.Tensor, top_k: int = 20, temperature: float = 1.0
) -> tuple[TokenBeliefs, AnswerTokens]:
    """Local beliefs at the answer positions of an HF-aligned batch (for logging and the claims suite)."""
    at = answer_tokens(logits.detach(), labels)
    return token_beliefs(at.logits, at.logz, top_k, temperature), at


def bs_t_token_ce(at: AnswerTokens, lam: float, top_k: int, temperature: float, detach: bool) -> torch.Tensor:
    """Soft cross-entropy CE_i of Eq. (5)–(6) at every answer token, shape [N].

    One gather of the k + 1 logits {y_i} ∪ H_k(i) carries the gradient, so the backward pass allocates one
    [N, V] scatter, exactly as GA's gather does; the selection of H_k itself has no gradient.
    """
    if lam == 0.0:
        return -at.target_logprob()  # t_i = e_{y_i}: GA exactly
    tb = token_beliefs(at.logits, at.logz, top_k, temperature)
    z = at.logits.gather(-1, torch.cat([at.targets[:, None], tb.indices], dim=-1))  # [N, 1+k]
    nll = at.logz[:, None] - z  # −log p_i[v] for v = y_i and v ∈ H_k(i)
    belief = tb.belief if detach else torch.softmax(z[:, 1:] / temperature, dim=-1)  # q_i (sg unless ablated)
    belief_ce = (belief * nll[:, 1:]).sum(-1)  # Σ_{v∈H_k} q_i[v] (−log p_i[v])
    return (1.0 - lam) * nll[:, 0] + lam * belief_ce  # Eq. (5): CE against t_i = λ q_i + (1−λ) e_{y_i}


def bs_t_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.2,
    top_k: int = 20,
    temperature: float = 1.0,
    detach: bool = True,
    reduction: str = "row",
) -> torch.Tensor:
    """Eq. (6): −mean CE_i against the soft target of Eq. (5); defaults λ = 0.2, k = 20, τ = 1."""
    check_reduction(reduction)
    check_fraction(lam, "lam")
    check_positive(temperature, "temperature")
    at = answer_tokens(logits, labels)
    check_top_k(top_k, logits.shape[-1])
    return -reduce_tokens(bs_t_token_ce(at, float(lam), top_k, temperature, detach), at, reduction)  # Eq. (6)


def bs_t_loss_paper(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.2,
    top_k: int = 20,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Eq. (5)–(6) as the paper prints them: a dense soft target t_i = λ·q_i + (1−λ)·e_{y_i} over the whole
    vocabulary and the full cross-entropy CE_i = −Σ_v t_i[v]·log p_i[v].

    Reading/test form, O(N·|V|) memory for N answer tokens: it builds the [N, V] belief q, one-hot e_y,
    target t and log-distribution log p. The fast form ``bs_t_loss`` never materialises t: it gathers the
    k + 1 logits {y_i} ∪ H_k(i), takes q as a softmax over the k gathered logits and CE_i as
    (1 − λ)(−log p_i[y_i]) + λ Σ_{v∈H_k} q_i[v](−log p_i[v]) (O(N·k) extra memory); it also has the
    ``detach=False`` ablation and the other reductions, which this form does not.

    Reduction: the paper's Eq. (6) sums CE over the answer tokens; like the authors' code this takes the mean
    over each answer's tokens and then over the rows with answers (docs/theory.md §11.1). The logits must be
    finite (a −inf logit gives 0·(−inf) in the dense sum; the fast form accepts −inf away from the label).
    """
    check_fraction(lam, "lam")
    check_positive(temperature, "temperature")
    da = dense_answers(logits, labels)
    check_top_k(top_k, logits.shape[-1])
    z = da.logits  # z_i, [N, V]
    with torch.no_grad():  # q_i = sg(·): the belief carries no gradient
        support = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.topk(top_k, dim=-1).indices, True)  # H_k(i)
        q = torch.softmax(z / temperature, dim=-1) * support  # softmax(z_i/τ) restricted to H_k(i) ...
        q = q / q.sum(dim=-1, keepdim=True)  # ... renormalised: Eq. (5)'s q_i, [N, V]
    e_y = F.one_hot(da.targets, z.shape[-1]).to(z.dtype)  # e_{y_i}, [N, V]
    t = lam * q + (1.0 - lam) * e_y  # Eq. (5): the soft target t_i, [N, V]
    ce = -(t * da.logp).sum(dim=-1)  # CE_i = −Σ_v t_i[v]·log p_i[v]
    return -answer_mean(ce, da)  # Eq. (6), per-sequence mean then mean over rows (authors' reduction)

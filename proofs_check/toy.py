"""Toy models for the claims suite: the ``toy_softmax`` and ``toy_autoregressive`` tiers of docs/theory.md §5.

toy_softmax
    Free logits z ∈ R^V (the model *is* its logits: K = I) and a linear head z = W·φ(x) + b over fixed
    random features φ (K = (φ_oᵀφ_u + 1)·I). These are the settings of Ren & Sutherland's one-step analysis;
    everything is exact.
toy_autoregressive
    ``ToyAR``: a tiny causal model over an answer vocabulary of V ≤ 6 tokens (token 0 = EOS) and answers of
    length ≤ L ≤ 4, conditioned on a prompt token. Every answer — EOS-terminated, or cut at length L — is
    enumerated, so sequence probabilities, the belief band and expectations over π are exact (they sum to 1
    to float64 precision): no sampling noise. Its NTK is not isotropic, which is the point: it tests the
    free-logit statements where parameters are shared across tokens and sequences.

Losses are always the library's (``bs_ref.losses``) applied to HF-aligned ``logits [B, T, V]`` and
``labels [B, T]``; a single free-logit distribution is wrapped as one answer position (``as_hf``).
Everything is float64.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from bs_ref.analysis.dynamics import module_fn
from bs_ref.losses import IGNORE_INDEX, sequence_logprob

DTYPE = torch.float64
EOS = 0


# ----------------------------------------------------------------------------------------------------
# toy_softmax
# ----------------------------------------------------------------------------------------------------


def as_hf(z: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One distribution softmax(z) [V] as an HF-aligned batch with one answer position predicting ``target``."""
    logits = torch.stack([z, torch.zeros_like(z)]).unsqueeze(0)  # position 0 predicts label 1
    labels = torch.tensor([[IGNORE_INDEX, int(target)]])
    return logits, labels


def token_loss_fn(loss, target: int, **kwargs):
    """L(z) for one free-logit distribution: ``loss`` (a bs_ref.losses function) on ``as_hf(z, target)``."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        logits, labels = as_hf(z, target)
        return loss(logits, labels, **kwargs)

    return fn


def free_logits_fn(params: dict, x: object = None) -> torch.Tensor:
    """model_fn of free logits: the parameters are the logits."""
    return params["z"]


def linear_head_fn(params: dict, phi: torch.Tensor) -> torch.Tensor:
    """model_fn of a linear head over features φ [d] (or [n, d]): z = W φ + b."""
    return phi @ params["W"].T + params["b"]


def random_logits(gen: torch.Generator, vocab: int, scale: float) -> torch.Tensor:
    """Gaussian logits; ``scale`` sets the peakiness (0 = uniform)."""
    return scale * torch.randn(vocab, generator=gen, dtype=DTYPE)


def linear_head(gen: torch.Generator, vocab: int, dim: int = 6, scale: float = 1.0) -> tuple[dict, torch.Tensor]:
    """(params, features) of a random linear head over two inputs: φ = tanh(R x), rows = inputs."""
    x = torch.randn(2, dim, generator=gen, dtype=DTYPE)
    phi = torch.tanh(x @ torch.randn(dim, dim, generator=gen, dtype=DTYPE))
    params = {
        "W": scale * torch.randn(vocab, dim, generator=gen, dtype=DTYPE),
        "b": torch.zeros(vocab, dtype=DTYPE),
    }
    return params, phi


def logits_for(p: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is ``p`` (p > 0)."""
    return torch.log(p)


# ----------------------------------------------------------------------------------------------------
# toy_autoregressive
# ----------------------------------------------------------------------------------------------------


class ToyAR(torch.nn.Module):
    """A tiny causal LM: h_t = tanh(W_h [e(id_t); mean_{s≤t} e(id_s); pos_t] + b_h), logits_t = W_o h_t + b_o.

    Token ids 0..V−1 are answer tokens (0 = EOS); V..V+P−1 are P prompt tokens. The output head covers
    the answer vocabulary only, so the logits are [B, T, V] and HF-aligned (position t predicts t+1).
    """

    def __init__(self, vocab: int = 5, n_prompts: int = 3, dim: int = 8, hidden: int = 16, max_len: int = 5):
        super().__init__()
        self.vocab, self.n_prompts = vocab, n_prompts
        self.embed = torch.nn.Embedding(vocab + n_prompts, dim)
        self.pos = torch.nn.Embedding(max_len, dim)
        self.hidden = torch.nn.Linear(3 * dim, hidden)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(input_ids)
        steps = torch.arange(1, input_ids.shape[1] + 1, dtype=e.dtype, device=e.device)
        prefix_mean = e.cumsum(1) / steps[None, :, None]
        pos = self.pos(torch.arange(input_ids.shape[1], device=e.device)).expand_as(e)
        return self.head(torch.tanh(self.hidden(torch.cat([e, prefix_mean, pos], -1))))


def enumerate_answers(vocab: int, max_len: int) -> list[tuple[int, ...]]:
    """Every answer over tokens 1..V−1 ending in EOS (0), plus every length-``max_len`` answer without EOS.

    Their probabilities under any ToyAR sum to 1 exactly (an answer stops at EOS or at the length limit).
    """
    words = range(1, vocab)
    answers = [(*w, EOS) for n in range(max_len) for w in itertools.product(words, repeat=n)]
    answers += list(itertools.product(words, repeat=max_len))
    return answers


def answer_batch(prompt: int, answers: list[tuple[int, ...]], vocab: int, max_len: int) -> dict[str, torch.Tensor]:
    """HF-aligned batch of (prompt, answer) rows: input_ids/labels [N, 1 + max_len], labels -100 on the
    prompt and on the padding after a short answer."""
    ids = torch.full((len(answers), 1 + max_len), EOS, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    ids[:, 0] = vocab + prompt
    for row, answer in enumerate(answers):
        ids[row, 1 : 1 + len(answer)] = torch.tensor(answer)
        labels[row, 1 : 1 + len(answer)] = torch.tensor(answer)
    return {"input_ids": ids, "labels": labels}


@dataclass
class ToyARCase:
    """A trained ToyAR with one prompt's exact answer distribution.

    target: index (into ``answers``) of the forget answer y_u; band: indices of the model's top-``band_size``
    other answers (its high-likelihood beliefs); beliefs: the top-N answers of θ_o, y_u included when it is
    among them (the off-policy "high-confidence" BS-S beliefs, as beam search would return them).
    """

    model: ToyAR
    prompt: int
    answers: list[tuple[int, ...]]
    batch: dict[str, torch.Tensor]
    target: int
    band: list[int]
    beliefs: list[int]
    seed: int
    info: dict = field(default_factory=dict)

    def fn_params(self):
        return module_fn(self.model)

    def logprobs(self, params: dict | None = None) -> torch.Tensor:
        """Exact log π(y|x) of every enumerated answer, shape [N]."""
        fn, own = module_fn(self.model)
        with torch.no_grad():
            return sequence_logprob(fn(params or own, self.batch["input_ids"]), self.batch["labels"])

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {k: v[indices] for k, v in self.batch.items()}


def train_toy_ar(
    seed: int = 0,
    vocab: int = 5,
    max_len: int = 3,
    steps: int = 150,
    lr: float = 0.05,
    band_size: int = 3,
    n_beliefs: int = 3,
    weights: tuple[float, ...] = (0.6, 0.15, 0.1, 0.05),
    tail: float = 0.3,
) -> ToyARCase:
    """Train a ToyAR (Adam, full batch) so that prompt 0 answers a random y_u with high probability and a
    few random other answers (its "paraphrases") with lower probability; other prompts get their own answers.

    ``weights`` are the training weights of y_u and its alternatives; more ``steps`` memorise more. ``tail``
    is the weight of a uniform "pretraining" distribution over all answers of prompt 0, so that probability
    mass has somewhere to go besides y_u and its band (π(y_u) ≈ 0.5, band ≈ 0.25, the rest ≈ 0.25).
    """
    if not 3 <= vocab <= 6 or not 1 <= max_len <= 4:
        raise ValueError(f"vocab must be in [3, 6] and max_len in [1, 4] (enumerable), got {vocab}, {max_len}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyAR(vocab=vocab, max_len=max_len + 1).to(DTYPE)
    answers = enumerate_answers(vocab, max_len)
    rows, row_weights = [], []
    for prompt in range(model.n_prompts):
        chosen = torch.randperm(len(answers), generator=gen)[: len(weights)].tolist()
        for a, w in zip(chosen, weights):
            rows.append((prompt, answers[a]))
            row_weights.append(w)
        if prompt == 0 and tail > 0:
            rows += [(0, a) for a in answers]
            row_weights += [tail / len(answers)] * len(answers)
    train = [answer_batch(p, [a], vocab, max_len) for p, a in rows]
    ids = torch.cat([b["input_ids"] for b in train])
    labels = torch.cat([b["labels"] for b in train])
    w = torch.tensor(row_weights, dtype=DTYPE)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = -(w * sequence_logprob(model(ids), labels)).sum() / w.sum()
        loss.backward()
        opt.step()
    model.eval()
    batch = answer_batch(0, answers, vocab, max_len)
    case = ToyARCase(model, 0, answers, batch, 0, [], [], seed)
    logp = case.logprobs()
    order = torch.argsort(logp, descending=True).tolist()
    target = answers.index(rows[0][1])
    case.target = target
    case.band = [i for i in order if i != target][:band_size]
    case.beliefs = order[:n_beliefs]
    case.info = {
        "vocab": vocab,
        "max_len": max_len,
        "n_answers": len(answers),
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": steps,
        "p_target": float(logp[target].exp()),
        "target_rank": order.index(target),
        "total_prob": float(logp.exp().sum()),
    }
    return case

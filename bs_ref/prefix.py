"""BS-S rows, cheaper: prefix sharing and belief subsampling (docs/theory.md §4, Eq. 7).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (7):

    L_BSS = (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u)

With the "row" reduction both terms are weighted sums of per-row values ℓ_r = L_base(row r) (the row's mean over
its answer tokens; NPO's per-sequence loss): weight (1 − λ_BSS)/B on each of the B forget rows with an answer and
λ_BSS/R on each of the R belief rows with an answer. Every row of one forget item starts with the same prompt
x_u. This file evaluates that weighted sum two ways cheaper than the row-by-row loop, with the same
expectation (subsampling) or the same value (sharing). ``BSS(share_prefix=..., belief_subsample=...)`` turns them
on; the declaration's ``forget_terms`` hands the runner (``bs_ref.runner.run_rows``) a term of ``Row``s, which
``plan_chunks`` below turns into forwards. ``batch_chunks`` does the same for a padded batch (every other term).

**Prefix sharing** (``share_prefix=True``). The forget row and the N belief rows of an item are packed into one
sequence, the prompt once and the answers as branches over it:

    input ids     [ x_1 … x_p | y_1 … y_n | ŷ¹_1 … ŷ¹_n1 | … ]                       right-padded
    position ids  [ 0 … p−1   | p … p+n−1 | p … p+n1−1   | … ]     each branch continues from the prompt's end
    attention     prompt causal; a branch token sees the whole prompt and its own branch causally, never another
                  branch; a padding token sees only what its row holds before it (its output is never used)

The mask is a [P, 1, L, L] tensor that Hugging Face causal LMs take as is (``transformers.masking_utils`` returns a
4D mask unchanged): for "eager" attention a float mask in the model's dtype, 0 where a query may attend and
``finfo(dtype).min`` elsewhere (it is added to the scores); for "sdpa" a boolean mask, True where a query may
attend (sdpa's own format, free of the compute dtype under autocast; a float mask works there too, and the tests
run both). Flash-attention takes no custom mask and is refused. Since every branch token sees exactly the tokens
and positions it would see in its own row, its hidden states and logits are those of the unshared row.

*The first token of every branch* is predicted at the prompt's last position p−1, whose logit is therefore
shared by all branches of the sequence. We gather, for each branch, the logits [z_{p−1}, z at its own tokens]
into a branch row ``[R, 1 + n_max, V]`` (``index_select``) with labels [-100, its answer labels] — exactly the
answer part of its unshared row, aligned as the losses expect (position t predicts label t+1). The base loss then
runs unchanged on these rows, and the backward of ``index_select`` adds the branches' gradients at z_{p−1}: the
same total the unshared rows give, where each row holds its own copy of that logit. (The alternative, a duplicate
of the last prompt token at the head of every branch, costs one more token per branch and a second copy of the
logit anyway.) The causal LM is asked only for the logits from the earliest p−1 of a chunk on
(``logits_to_keep``), so most prompt positions never reach the output layer.

*Saving*: the prompt's forward and backward are paid once per item instead of 1 + N times (and its logits not
at all). Tokens through forward + backward per item go from (1 + N)·p + n + Σ_j n_j to p + n + Σ_j n_j. The
attention of a packed sequence is dense over its length L (the mask, not the kernel, skips the other branches),
which costs more than (1 + N) short rows only when L is long; the MLPs and the output layer, which dominate for
short answers, pay per token. A sequence holds at most ``chunk_rows`` branches (a larger item is split over
several sequences, each with its prompt) and a forward at most ``chunk_rows`` branches, so peak activation memory
stays flat in N at a fixed micro-batch, as in the unshared loop.

**Belief subsampling** (``belief_subsample=m``). Each step keeps, for every forget item i with N_i belief rows that
have an answer, m_i = min(m, N_i) of them, drawn uniformly without replacement by a seeded ``torch.Generator``
(never the global RNG), and weighs each kept row by N_i/m_i (Horvitz–Thompson) over the exact normaliser R:

    L̂_base(D̂_u) = (1/R) Σ_i (N_i/m_i) Σ_{j∈S_i} ℓ_ij,       R = Σ_i N_i  (belief rows with an answer)

*Unbiasedness* (the proof, with empty rows). An empty belief (no answer token: the model stopped at once, or an
all-ignored row) is not in the exact term: L_base(D̂_u) = (1/R) Σ_i Σ_{j≤N_i} ℓ_ij over the rows WITH an answer,
and R counts exactly those. Which rows have an answer is known before any draw (from the labels), so N_i and R are
constants, not random. Draws are made among the N_i answered rows only, so P(j ∈ S_i) = m_i/N_i for each of them
(uniform m_i-subsets of N_i), and by linearity of expectation

    E[L̂] = (1/R) Σ_i (N_i/m_i) Σ_j P(j ∈ S_i)·ℓ_ij = (1/R) Σ_i Σ_j ℓ_ij = L_base(D̂_u).

The weights do not depend on θ, so the same holds for the gradient: E[∇_θ L̂] = ∇_θ L_base(D̂_u) (each ℓ_ij is
differentiated where it is kept). An item with N_i ≤ m keeps all its rows with weight 1 (no variance); one with
N_i = 0 has no term in either sum. Drawing among all N cached answers instead (empties included) and normalising
by the number of kept answered rows would make the normaliser random — a ratio estimator, biased; drawing them
and reweighting by N/m over R is unbiased but wastes draws on rows that contribute nothing. With m ≥ N every row
is kept with weight 1 and the estimate is the exact term. The test enumerates every subset on a tiny model in
float64 (tests/test_bs_s_floor.py).

Both combine: the packed sequence of an item then holds its prompt, its forget answer and its m kept beliefs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bs_ref.losses import IGNORE_INDEX


@dataclass
class Row:
    """One row of the forget objective, unpadded: ``prompt`` (its tokens before the first answer label), then
    ``answer`` (the rest of the row) with its ``labels``; it enters the loss as ``weight · L_base(row)``."""

    prompt: tuple[int, ...]
    answer: list[int]
    labels: list[int]
    weight: float
    forget: bool  # a forget row (its log-prob and top-k mass are logged) or a belief row


def split_rows(batch: dict) -> list[tuple[tuple[int, ...], list[int], list[int]] | None]:
    """(prompt, answer ids, answer labels) of every right-padded row of ``batch`` (None for a row without an answer
    token). The prompt ends where the first scored label starts (the label at position 0 is never predicted)."""
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    mask = batch.get("attention_mask")
    lengths = mask.sum(dim=1).tolist() if mask is not None else [len(x) for x in ids]
    if mask is not None and bool((mask[:, :-1] < mask[:, 1:]).any()):
        raise ValueError("BS-S prefix sharing / belief subsampling needs right-padded rows (attention_mask 1…1 0…0)")
    out = []
    for x, y, n in zip(ids, labels, lengths):
        start = next((t for t in range(1, n) if y[t] != IGNORE_INDEX), None)
        out.append(None if start is None else (tuple(x[:start]), x[start:n], y[start:n]))
    return out


def forget_rows(forget_batch: dict, weight: float) -> list[Row]:
    """The forget rows with an answer, each weighted ``weight / B`` (B: rows with an answer): weight·L_base(D_u)."""
    split = [s for s in split_rows(forget_batch) if s is not None]
    if not split:
        return []
    return [Row(p, a, y, weight / len(split), True) for p, a, y in split]


def draw_subsets(sizes: list[int], m: int, generator: torch.Generator) -> list[list[int]]:
    """For groups of ``sizes`` rows, min(m, N_i) row positions of each, uniformly without replacement (sorted)."""
    return [sorted(torch.randperm(n, generator=generator)[:m].tolist()) if n > m else list(range(n)) for n in sizes]


def belief_rows(
    belief_batch: dict, weight: float, subsample: int | None = None, generator: torch.Generator | None = None
) -> list[Row]:
    """The belief rows with an answer, weighted so that Σ_r w_r·ℓ_r is weight·L_base(D̂_u) (row reduction).

    ``subsample=None``: every row, w_r = weight/R. ``subsample=m``: m of each item's answered rows (the item is
    ``owner_index`` when the batch has it, else the prompt), drawn by ``draw_subsets`` with ``generator``, each
    with w_r = weight·(N_i/m_i)/R: unbiased for weight·L_base(D̂_u) (module docstring)."""
    split = split_rows(belief_batch)
    answered = [r for r, s in enumerate(split) if s is not None]
    if not answered:
        return []
    total = len(answered)  # R: the exact normaliser, rows with an answer (known before any draw)
    if subsample is None:
        return [Row(*split[r], weight / total, False) for r in answered]
    owners = belief_batch.get("owner_index")
    keys = owners.tolist() if owners is not None and owners.numel() == len(split) else [s and s[0] for s in split]
    groups: dict = {}
    for r in answered:
        groups.setdefault(keys[r], []).append(r)
    if generator is None:
        raise ValueError("belief subsampling needs a seeded torch.Generator (never the global RNG)")
    members = list(groups.values())
    rows = []
    for group, kept in zip(members, draw_subsets([len(g) for g in members], subsample, generator)):
        factor = len(group) / len(kept)  # N_i/m_i (Horvitz–Thompson)
        rows.extend(Row(*split[group[j]], weight * factor / total, False) for j in kept)
    return rows


# ------------------------------------------------------------------------------------------------------------
# Chunks: the inputs of one forward, and how its logits map to rows
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One forward's rows. ``inputs`` go to the model; its logits [P, K, V] (the last K positions) map to rows
    [R, W, V] through ``gather`` (packed: row r's W positions in the sequence ``gather_seq[r]``; None: the logits are
    the rows); ``labels`` [R, W] belong to those rows. Rows planned from ``Row``s carry ``weights`` [R] (float64) and
    ``forget`` [R] (which of them are forget rows); a chunk of a padded batch (``batch_chunks``) carries neither."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    forget: torch.Tensor | None = None
    tokens: int = 0  # tokens through the model, padding excluded (a shared prompt once per sequence)
    gather_seq: torch.Tensor | None = None
    gather_pos: torch.Tensor | None = None

    def rows(self, logits: torch.Tensor) -> torch.Tensor:
        """The rows' logits [R, W, V] from the model's logits [P, K, V] of this chunk."""
        if self.gather_seq is None:
            return logits
        seqs, kept, vocab = logits.shape
        offset = self.inputs["input_ids"].shape[1] - kept  # the model returned the last ``kept`` positions
        index = (self.gather_seq[:, None] * kept + self.gather_pos - offset).reshape(-1).to(logits.device)
        return logits.reshape(seqs * kept, vocab).index_select(0, index).view(*self.gather_pos.shape, vocab)


def batch_chunks(batch: dict, chunk_rows: int | None = None) -> list[Chunk]:
    """A right-padded batch as collated (input_ids, attention_mask, labels) in forwards.

    ``chunk_rows`` None: the batch as it is, in one forward. Otherwise at most ``chunk_rows`` rows per forward,
    longest first (each chunk carries little padding), with the all-padding columns on the right of a chunk
    dropped; a chunk without answer tokens is left out (it adds nothing to any loss)."""
    if chunk_rows is None:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        return [Chunk(inputs, batch["labels"])]
    attention = batch.get("attention_mask")
    attention = attention if attention is not None else torch.ones_like(batch["input_ids"])
    by_length = torch.argsort(attention.sum(dim=1), descending=True, stable=True)
    ids, labels, attention = batch["input_ids"][by_length], batch["labels"][by_length], attention[by_length]
    chunks = []
    for start in range(0, labels.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        width = int(attention[rows].any(dim=0).nonzero().max()) + 1  # drop all-padding columns on the right
        if bool((labels[rows, 1:width] != IGNORE_INDEX).any()):
            inputs = {"input_ids": ids[rows, :width], "attention_mask": attention[rows, :width]}
            chunks.append(Chunk(inputs, labels[rows, :width]))
    return chunks


def plan_chunks(rows: list[Row], share_prefix: bool, chunk_rows: int, mask_dtype: torch.dtype) -> list[Chunk]:
    """The rows in forwards, longest first.

    Unshared: at most ``chunk_rows`` rows per forward, each prompt + answer, right-padded, with a 2D attention mask
    (the loop's own forward). Shared: rows with the same prompt are packed as branches of one sequence (block mask
    and position ids of the module docstring), and a forward holds at most the tokens of ``chunk_rows`` unshared
    rows of the longest kind (``chunk_rows · max_r |row r|``): the memory bound of an unshared micro-batch, reached
    with fewer forwards since a shared prompt fills it once. An item whose branches exceed it is split over several
    sequences, each with its prompt, so peak memory stays flat in N."""
    if not share_prefix:
        order = sorted(rows, key=lambda r: -(len(r.prompt) + len(r.answer)))
        return [_plain_chunk(order[i : i + chunk_rows]) for i in range(0, len(order), chunk_rows)]
    budget = chunk_rows * max(len(r.prompt) + len(r.answer) for r in rows)
    groups: dict[tuple[int, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.prompt, []).append(row)
    sequences: list[list[Row]] = []
    for group in groups.values():
        sequences.append([])
        for row in group:  # every branch fits alone: |prompt| + |answer| ≤ budget
            if sequences[-1] and _length(sequences[-1]) + len(row.answer) > budget:
                sequences.append([])
            sequences[-1].append(row)
    sequences.sort(key=lambda s: -_length(s))
    chunks, current, tokens = [], [], 0
    for seq in sequences:
        if current and tokens + _length(seq) > budget:
            chunks.append(_packed_chunk(current, mask_dtype))
            current, tokens = [], 0
        current.append(seq)
        tokens += _length(seq)
    if current:
        chunks.append(_packed_chunk(current, mask_dtype))
    return chunks


def _length(sequence: list[Row]) -> int:
    return len(sequence[0].prompt) + sum(len(r.answer) for r in sequence)


def _plain_chunk(rows: list[Row]) -> Chunk:
    width = max(len(r.prompt) + len(r.answer) for r in rows)
    ids, labels, mask = [], [], []
    for r in rows:
        n = len(r.prompt) + len(r.answer)
        ids.append([*r.prompt, *r.answer] + [0] * (width - n))
        labels.append([IGNORE_INDEX] * len(r.prompt) + r.labels + [IGNORE_INDEX] * (width - n))
        mask.append([1] * n + [0] * (width - n))
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    return Chunk(inputs, torch.tensor(labels), *_weights(rows), tokens=sum(sum(m) for m in mask))


def _packed_chunk(sequences: list[list[Row]], mask_dtype: torch.dtype) -> Chunk:
    length = max(_length(s) for s in sequences)
    width = 1 + max(len(r.answer) for s in sequences for r in s)  # z_{p−1}, then one logit per answer token
    ids, pos, seg = [], [], []
    gather_seq, gather_pos, labels = [], [], []
    for s, rows in enumerate(sequences):
        p = len(rows[0].prompt)
        x, q, g = list(rows[0].prompt), list(range(p)), [0] * p
        for branch, r in enumerate(rows, start=1):
            n, start = len(r.answer), len(x)
            x += r.answer
            q += range(p, p + n)
            g += [branch] * n
            gather_seq.append(s)
            gather_pos.append([p - 1, *range(start, start + n)] + [p - 1] * (width - 1 - n))
            labels.append([IGNORE_INDEX, *r.labels] + [IGNORE_INDEX] * (width - 1 - n))
        pad = length - len(x)
        ids.append(x + [0] * pad)
        pos.append(q + [0] * pad)
        seg.append(g + [-1] * pad)
    segment = torch.tensor(seg)
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool)  # a padding query sees itself: no all-masked row, no NaN
    if mask_dtype == torch.bool:  # True: may attend (sdpa's own format)
        mask = allowed
    else:  # 0 where a query may attend, the dtype's minimum elsewhere (what eager attention adds to its scores)
        mask = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill_(~allowed, torch.finfo(mask_dtype).min)
    first = min(len(s[0].prompt) for s in sequences) - 1  # no logit before the earliest p−1 is needed
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": mask[:, None], "position_ids": torch.tensor(pos)}
    inputs["logits_to_keep"] = length - first
    rows = [r for s in sequences for r in s]
    gather = torch.tensor(gather_seq), torch.tensor(gather_pos)
    return Chunk(inputs, torch.tensor(labels), *_weights(rows), int((segment >= 0).sum()), *gather)


def _weights(rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([r.weight for r in rows], dtype=torch.float64), torch.tensor([r.forget for r in rows])


def mask_dtype(model) -> torch.dtype:
    """bool for "sdpa" (its native mask, whatever the compute dtype, e.g. under autocast), the model's float dtype for
    "eager" (added to the scores); flash-attention takes no custom mask and is refused."""
    config = getattr(getattr(model, "module", model), "config", None)
    implementation = str(getattr(config, "_attn_implementation", None) or "eager")
    if "flash" in implementation:
        raise ValueError(
            f"BS-S share_prefix needs a custom 4D attention mask, which attn_implementation={implementation!r} "
            "does not take; load the model with attn_implementation='sdpa' or 'eager', or set share_prefix=False"
        )
    if implementation == "sdpa":
        return torch.bool
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())

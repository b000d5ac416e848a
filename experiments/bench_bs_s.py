"""BS-S speed and memory (``python experiments/bench.py bs_s``), measured as ratios within one run.

    python experiments/bench.py bs_s --quick              # small model, < 2 min on 2 CPU cores
    python experiments/bench.py bs_s                      # a larger random Llama (d=256, 4 layers), longer answers
    python experiments/bench.py bs_s --model smollm2      # any HF checkpoint / hub id, or the packaged SmolLM2

What it measures (issue "Beliefs and BS-S"), on one forget set of F items, batch B, answers of A tokens:

1. **Step time, amortised over an epoch**: BS-S (N = 3, on-policy, one refresh per epoch, BS-T base) = the
   wall time of one epoch (the refresh, i.e. ``sample_beliefs`` over all F prompts, plus F/B steps of
   ``bs_ref.unlearn.forget_backward`` and an optimiser step) divided by F/B; against NPO = forward + backward + the
   reference model's forward + optimiser step. Epochs of the two methods alternate and the median over the
   repeats is used, so contention from other processes hits both alike.
2. **Generation**: ``sample_beliefs`` over 8 prompts (N = 3) in one batch against one prompt at a time.
3. **Peak memory** of the BS-S step against ``belief_microbatch`` and against N. On CUDA:
   ``torch.cuda.max_memory_allocated`` above the memory held before the step. On CPU the process RSS is too
   coarse (and the allocator keeps freed pages), so we measure the activations autograd keeps for backward:
   every tensor saved by the graph passes through ``torch.autograd.graph.saved_tensors_hooks``; we count its
   storage once (parameters excluded) while it is alive and record the peak over the step. That is the memory
   that micro-batching bounds; transient buffers freed inside a forward are not in it.
4. **Profile**: where an epoch of BS-S goes: generation (the refresh), forget-term forward/backward (timed
   again with no beliefs), belief-term forward/backward (the rest of ``bs_ref.unlearn.forget_backward``), optimiser.

Compute bound: a BS-S step sends (1 + N)·B rows through forward + backward (≈ 3 forward units each), NPO sends
B rows through forward + backward and B through the reference forward, so with beliefs as long as the forget
answers the ratio cannot fall below (1 + N)·3/4 = 3 at N = 3 even with free generation; the script prints
that bound next to the measured ratio.

Workload: random token prompts and answers (any tokenizer), the belief answers capped at the forget answer
length, so belief rows cost about as much as forget rows (an untrained model rarely stops early: the
worst case for BS-S). Output: ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import weakref

import torch

from bs_ref.beliefs import BeliefCache, sample_beliefs
from bs_ref.generation import right_pad
from bs_ref.losses import IGNORE_INDEX, npo_loss, sequence_logprob
from bs_ref.methods import make_method
from bs_ref.unlearn import forget_backward


def build_small_model(quick: bool, seed: int = 0):
    """A randomly initialised Llama and a word-level tokenizer (EOS + pad): d=128/2 layers (quick, about the
    TOFU experiment's default preset) or d=256/4 layers/V=2048 (about 8x the compute per token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bs_ref.models import TinyLlamaConfig, build_tiny_llama

    if quick:
        cfg = TinyLlamaConfig(hidden_size=128, intermediate_size=344, num_layers=2, num_heads=2, vocab_size=512)
    else:
        cfg = TinyLlamaConfig(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, vocab_size=2048)
    names = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(cfg.vocab_size - 3)]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    return build_tiny_llama(len(names), cfg, tokenizer, seed=seed), tokenizer


def make_workload(tokenizer, vocab_size: int, items: int, prompt_len: int, answer_len: int, seed: int = 0):
    """Random prompts {index: ids} and forget rows (prompt + answer + EOS) of ordinary (non-special) tokens."""
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([t for t in range(min(vocab_size, len(tokenizer))) if t not in special])
    prompts, rows, labels = {}, [], []
    for i in range(items):
        prompt = ordinary[torch.randint(len(ordinary), (prompt_len,), generator=g)].tolist()
        answer = ordinary[torch.randint(len(ordinary), (answer_len,), generator=g)].tolist() + [tokenizer.eos_token_id]
        prompts[i] = prompt
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * prompt_len + answer)
    return prompts, rows, labels


def forget_batches(rows, labels, batch_size, pad_id):
    out = []
    for start in range(0, len(rows), batch_size):
        batch = right_pad(rows[start : start + batch_size], labels[start : start + batch_size], pad_id)
        batch["index"] = torch.arange(start, min(start + batch_size, len(rows)))
        out.append(batch)
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def npo_epoch(model, ref_model, batches, opt, device):
    """One NPO epoch: forward + backward + reference forward + step per batch."""
    sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        with torch.no_grad():
            ref = sequence_logprob(ref_model(input_ids=ids, attention_mask=mask).logits, labels)
        loss = npo_loss(model(input_ids=ids, attention_mask=mask).logits, labels, ref)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def bs_s_epoch(model, tokenizer, cache, prompts, batches, opt, device, microbatch, epoch, profile=None):
    """One BS-S epoch: the on-policy refresh (once per epoch) then a BS-S step per batch."""
    sync(device)
    t0 = time.perf_counter()
    for step, batch in enumerate(batches):
        t = time.perf_counter()
        cache.maybe_refresh(model, tokenizer, epoch=epoch + step / len(batches), step=step, prompts_by_index=prompts)
        sync(device)
        t1 = time.perf_counter()
        beliefs = cache.batch(batch["index"], tokenizer.pad_token_id)
        forget_backward(make_method("bs_s", belief_microbatch=microbatch), model, batch, beliefs)
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if profile is not None:
            profile["refresh"] += t1 - t
            profile["forget_backward"] += t2 - t1
            profile["optimiser"] += time.perf_counter() - t2
    return time.perf_counter() - t0


class SavedActivationMeter:
    """Peak bytes of the tensors autograd saves for backward (CPU memory measure; see module docstring)."""

    def __init__(self, model):
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
        self.current = self.peak = self.graph_peak = 0
        self.graph_peaks: list[int] = []  # peak of each graph (forget term, then each belief micro-batch)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.parameter_storages or storage.nbytes() == 0:
            return tensor
        entry = self.live.setdefault(ptr, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
            self.graph_peak = max(self.graph_peak, self.current)
        entry[1] += 1
        holder = _Saved(tensor)
        weakref.finalize(holder, self._release, ptr)
        return holder

    @staticmethod
    def _unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, ptr):
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]
            if self.current == 0:  # a graph was freed by its backward
                self.graph_peaks.append(self.graph_peak)
                self.graph_peak = 0

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def peak_step_memory(model, forget, beliefs, microbatch, device) -> tuple[int, int]:
    """Peak memory (bytes) of one BS-S forward/backward and of its belief term alone. The step peak is the CUDA
    allocator peak above the memory held before the step, or the saved-activation peak on CPU; the belief-term
    peak is the largest saved-activation peak of a belief micro-batch graph (the forget graph is freed by its
    backward before the first belief micro-batch runs), on either device."""
    model.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with SavedActivationMeter(model) as meter:
        forget_backward(make_method("bs_s", belief_microbatch=microbatch), model, forget, beliefs)
    peak = meter.peak
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    model.zero_grad(set_to_none=False)
    return peak, max(meter.graph_peaks[1:], default=0)


SUMMARY = "BS-S vs NPO step time, batched generation, memory, profile"


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options of ``bench.py bs_s`` (also the ``bs_s`` sub-command of experiments/bench.py)."""
    parser = argparse.ArgumentParser(prog="bench.py bs_s", description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument(
        "--quick", action="store_true", help="small model and workload, < 2 min on 2 CPU cores (default: off)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="HF checkpoint directory, hub id, or 'smollm2' (default: a random Llama built here, "
        "d=128/2 layers/V=512 with --quick, else d=256/4 layers/V=2048)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s; cuda when available, else cpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: %(default)s, for stable ratios)"
    )
    parser.add_argument("--items", type=int, default=None, help="forget items F (default: 16 with --quick, else 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="forget batch B (default: %(default)s)")
    parser.add_argument(
        "--answer-len",
        type=int,
        default=None,
        help="answer tokens A = belief max_new_tokens (default: 16 with --quick, else 32)",
    )
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="epochs per method, the median is reported (default: 2 with --quick, else 3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random model, the workload and belief sampling (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    items = args.items or (16 if args.quick else 32)
    answer_len = args.answer_len or (16 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 3)
    n_beliefs, microbatch = 3, 8

    if args.model:
        from bs_ref.models import load_model

        model, tokenizer = load_model(args.model)
        source = args.model
    else:
        model, tokenizer = build_small_model(args.quick, args.seed)
        shape = "d=128, 2 layers, V=512" if args.quick else "d=256, 4 layers, V=2048"
        source = f"random Llama ({shape})"
    model.to(device).train()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompts, rows, labels = make_workload(tokenizer, vocab, items, args.prompt_len, answer_len, args.seed)
    batches = forget_batches(rows, labels, args.batch_size, tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {source}")
    print(f"parameters: {n_params}")
    print(f"device: {device}")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"workload: F={items} B={args.batch_size} prompt={args.prompt_len} answer={answer_len} tokens")
    print(f"bs_s settings: N={n_beliefs} on_policy refresh_epochs=1 select=sample base=bs_t microbatch={microbatch}")

    # 1. step time amortised over an epoch (alternating epochs, median)
    def fresh_cache():
        return BeliefCache("on_policy", refresh_epochs=1.0, n=n_beliefs, max_new_tokens=answer_len + 1)

    bs_model, npo_model = copy.deepcopy(model), copy.deepcopy(model)
    opt_bs = torch.optim.SGD(bs_model.parameters(), lr=1e-4)
    opt_npo = torch.optim.SGD(npo_model.parameters(), lr=1e-4)
    cache = fresh_cache()
    npo_epoch(npo_model, ref_model, batches[:1], opt_npo, device)  # warm-up (allocator, kernels)
    warm = {i: prompts[i] for i in batches[0]["index"].tolist()}
    bs_s_epoch(bs_model, tokenizer, fresh_cache(), warm, batches[:1], opt_bs, device, microbatch, 0)
    npo_times, bs_times = [], []
    profile = dict(refresh=0.0, forget_backward=0.0, optimiser=0.0)
    for epoch in range(repeats):
        npo_times.append(npo_epoch(npo_model, ref_model, batches, opt_npo, device))
        bs_times.append(
            bs_s_epoch(bs_model, tokenizer, cache, prompts, batches, opt_bs, device, microbatch, epoch, profile)
        )
    assert cache.refreshes == repeats, "on-policy refresh_epochs=1 must refresh once per epoch"
    npo_step = statistics.median(npo_times) / len(batches)
    bs_step = statistics.median(bs_times) / len(batches)
    print(f"npo step seconds: {npo_step:.4f}")
    print(f"bs_s step seconds (amortised, incl. refresh): {bs_step:.4f}")
    print(f"bs_s/npo step-time ratio: {bs_step / npo_step:.3f}")
    # rows through forward+backward (≈ 3 forward units each): BS-S (1 + N)·B, NPO B plus B reference forwards
    bound = (1 + n_beliefs) * 3 / (3 + 1)
    print(f"bs_s/npo compute lower bound without generation ((1+N)*3/(3+1), equal lengths): {bound:.2f}")
    print(f"bs_s step over its compute lower bound: {bs_step / npo_step / bound:.3f}")
    no_refresh = (statistics.median(bs_times) - profile["refresh"] / repeats) / len(batches)
    print(
        f"bs_s/npo step-time ratio without the refresh (off-policy after its one sampling): {no_refresh / npo_step:.3f}"
    )

    # 4. profile of a BS-S epoch: the refresh (generation), then the step split into forget and belief terms
    refresh = profile["refresh"] / repeats
    sync(device)
    t = time.perf_counter()
    for batch in batches:
        forget_backward(make_method("bs_s"), bs_model, batch, None)
    sync(device)
    forget_only = time.perf_counter() - t
    bs_model.zero_grad(set_to_none=True)
    fwd_bwd = profile["forget_backward"] / repeats
    total = refresh + fwd_bwd + profile["optimiser"] / repeats
    parts = {
        "generation (refresh: generate + per-token log-probs)": refresh,
        "forget term forward/backward": min(forget_only, fwd_bwd),
        "belief term forward/backward": max(fwd_bwd - forget_only, 0.0),
        "optimiser step": profile["optimiser"] / repeats,
    }
    for name, seconds in parts.items():
        print(f"profile {name} share: {seconds / total:.3f}")
    print(f"profile epoch seconds: {total:.3f}")

    # 2. generation throughput: 8 prompts batched vs one at a time
    eight = [prompts[i % items] for i in range(8)]
    gen_kwargs = dict(n=n_beliefs, max_new_tokens=answer_len + 1, seed=args.seed)
    sample_beliefs(model, tokenizer, eight[:1], batch_size=1, **gen_kwargs)  # warm-up
    batched, sequential = [], []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        b = sample_beliefs(model, tokenizer, eight, batch_size=8, **gen_kwargs)
        sync(device)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = sample_beliefs(model, tokenizer, eight, batch_size=1, **gen_kwargs)
        sync(device)
        sequential.append(time.perf_counter() - t)
    tokens = sum(len(b.answer_ids(i)) for i in range(len(b)))
    tokens_sequential = sum(len(s.answer_ids(i)) for i in range(len(s)))
    print(f"generation batched seconds (8 prompts x N={n_beliefs}): {statistics.median(batched):.4f}")
    print(f"generation sequential seconds: {statistics.median(sequential):.4f}")
    print(f"generation batched tokens/s: {tokens / statistics.median(batched):.1f}")
    print(f"generation sequential tokens/s: {tokens_sequential / statistics.median(sequential):.1f}")
    print(f"batched/sequential generation speed-up: {statistics.median(sequential) / statistics.median(batched):.2f}")

    # 3. peak memory vs belief_microbatch (N fixed) and vs N (micro-batch fixed, and un-micro-batched)
    unit = "MiB (cuda allocator peak)" if device.type == "cuda" else "MiB (autograd saved activations)"
    saved = "MiB (autograd saved activations)"
    forget = batches[0]
    big = BeliefCache(n=8, max_new_tokens=answer_len + 1)
    big.refresh(model, tokenizer, {i: prompts[i] for i in forget["index"].tolist()})
    for mb in (1, 2, 4, 8, 16):
        beliefs = _first_n_beliefs(big, forget, n_beliefs, tokenizer.pad_token_id)
        peak, belief_peak = peak_step_memory(model, forget, beliefs, mb, device)
        print(f"peak memory step N={n_beliefs} belief_microbatch={mb} {unit}: {peak / 2**20:.2f}")
        print(f"peak memory belief term N={n_beliefs} belief_microbatch={mb} {saved}: {belief_peak / 2**20:.2f}")
    for n in (1, 2, 4, 8):
        beliefs = _first_n_beliefs(big, forget, n, tokenizer.pad_token_id)
        peak, _ = peak_step_memory(model, forget, beliefs, microbatch, device)
        whole, _ = peak_step_memory(model, forget, beliefs, beliefs["input_ids"].shape[0], device)
        print(f"peak memory step N={n} belief_microbatch={microbatch} {unit}: {peak / 2**20:.2f}")
        print(f"peak memory step N={n} un-micro-batched {unit}: {whole / 2**20:.2f}")


def _first_n_beliefs(cache, forget, n, pad_id):
    """The first n cached beliefs of each forget item (empty answers included so every N has n·B rows)."""
    ids, labels = [], []
    for i in forget["index"].tolist():
        for b in cache.entries[i][:n]:
            ids.append(b.input_ids)
            labels.append(b.labels)
    return right_pad(ids, labels, pad_id)


if __name__ == "__main__":
    main()

"""BS-S speed and memory (``python experiments/bench.py bs_s``), measured as ratios within one run.

    python experiments/bench.py bs_s --quick              # small model, < 2 min on 2 CPU cores
    python experiments/bench.py bs_s                      # a larger random Llama (d=256, 4 layers), longer answers
    python experiments/bench.py bs_s --model smollm2      # any HF checkpoint / hub id, or the packaged SmolLM2
    python experiments/bench.py bs_s --quick --profile    # + torch.profiler tables of a BS-T and a BS-S step, V=128k

What it measures (issue "Beliefs and BS-S"), on one forget set of F items, batch B, answers of A tokens:

1. **Step time against NPO and against the compute floor**, for four BS-S variants (N = 3, BS-T base,
   ``VARIANTS``): Eq. (7) exactly (``bs_s``), with m = 1 of the N beliefs per step (``bs_s(m=1)``, unbiased,
   ``BSS.belief_subsample``), and both with prefix sharing (``bs_s(shared)``, ``bs_s(m=1,shared)``,
   ``BSS.share_prefix``; ``bs_ref.prefix``). A BS-S step is ``bs_ref.runner.forget_backward`` plus an optimiser
   step on the cached beliefs; NPO's is forward + backward + the reference model's forward + optimiser step. The
   steps of NPO and of every variant run in turn, batch by batch, so contention from other processes hits all
   alike; a method's step time is the mean over the batches of each batch's median over the epochs.
   ``<variant>/npo step-time ratio`` is that of the **off-policy** regime (the paper's default): the beliefs are
   sampled once before the run, so a step holds no generation. Generation is reported apart: the seconds of one
   refresh (``sample_beliefs`` over all F prompts), its share of an on-policy step (one refresh per epoch,
   amortised over the F/B steps of the epoch) and of an off-policy run (paid once, over ``OFF_POLICY_EPOCHS``
   epochs), and the on-policy ratios. The beliefs are refreshed from each variant's own model every epoch.
   **Compute floor**: tokens × passes on the batches actually run (``floor_tokens``, padding excluded):
   forward + backward ≈ 3 units per token, a reference forward ≈ 1, so NPO = 3·T_forget + 1·T_forget and BS-S =
   3·(T_forget + T_beliefs), with T_beliefs the expected tokens of the kept beliefs under subsampling and a
   shared prompt counted once per packed sequence. ``measured/floor`` = step-time ratio / floor. The floor counts
   tokens only: a forward's fixed cost, the attention's length, the BS-T loss's top-k are not in it.
2. **Generation**: ``sample_beliefs`` over 8 prompts (N = 3) in one batch against one prompt at a time.
3. **Peak memory** of the BS-S step against ``belief_microbatch`` and against N (also with prefix sharing). On
   CUDA: ``torch.cuda.max_memory_allocated`` above the memory held before the step. On CPU the process RSS is too
   coarse (and the allocator keeps freed pages), so we measure the activations autograd keeps for backward:
   every tensor saved by the graph passes through ``torch.autograd.graph.saved_tensors_hooks``; we count its
   storage once (parameters excluded) while it is alive and record the peak over the step. That is the memory
   that micro-batching bounds; transient buffers freed inside a forward are not in it.
4. **Profile**: where an on-policy epoch of exact BS-S goes: generation (the refresh), forget-term
   forward/backward (timed again with no beliefs), belief-term forward/backward (the rest of
   ``bs_ref.runner.forget_backward``), optimiser. ``--profile`` adds operator tables (``profile_steps``).

Compute bound (the exact, unshared floor at equal lengths): a BS-S step sends (1 + N)·B rows through forward +
backward, NPO B rows through forward + backward and B through the reference forward: (1 + N)·3/4 = 3 at N = 3.

Workload: random token prompts and answers (any tokenizer), the belief answers capped at the forget answer
length, so belief rows cost about as much as forget rows (an untrained model rarely stops early: the
worst case for BS-S). Output: ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import weakref

import torch

from bs_ref import files, prefix
from bs_ref.beliefs import BeliefCache, BeliefSampling, sample_beliefs
from bs_ref.generation import right_pad
from bs_ref.losses import IGNORE_INDEX, npo_loss, sequence_logprob
from bs_ref.methods import make_method
from bs_ref.runner import forget_backward

VARIANTS = (  # (name in the ratio lines, label of the floor lines, BSS fields)
    ("bs_s", "exact", {}),
    ("bs_s(m=1)", "m=1", {"belief_subsample": 1}),
    ("bs_s(shared)", "exact, shared", {"share_prefix": True}),
    ("bs_s(m=1,shared)", "m=1, shared", {"share_prefix": True, "belief_subsample": 1}),
)
"""The BS-S variants timed against NPO: Eq. (7) exactly, with m = 1 of the N beliefs per step (unbiased), each
with and without prefix sharing (``bs_ref.prefix``)."""

OFF_POLICY_EPOCHS = 10
"""Epochs of the run over which an off-policy sampling is spread in the generation-share line (the authors' 10)."""


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


def npo_step(model, ref_model, batch, opt, device) -> float:
    """One NPO step: forward + backward + reference forward + optimiser step; its seconds."""
    sync(device)
    t0 = time.perf_counter()
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        ref = sequence_logprob(ref_model(input_ids=ids, attention_mask=mask).logits, labels)
    loss = npo_loss(model(input_ids=ids, attention_mask=mask).logits, labels, ref)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def bs_s_step(model, tokenizer, cache, batch, opt, device, method, ref_model=None):
    """One BS-S step of ``method`` on its cached beliefs: (forward/backward seconds, optimiser seconds, its
    ``floor_tokens``). ``ref_model``: π_ref, used with the NPO base only."""
    beliefs = cache.batch(batch["index"], tokenizer.pad_token_id)
    sync(device)
    t = time.perf_counter()
    forget_backward(method, model, batch, beliefs, ref_model=ref_model if method.needs_reference else None)
    sync(device)
    t1 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return t1 - t, time.perf_counter() - t1, floor_tokens(batch, beliefs, method)


def refresh_seconds(model, tokenizer, cache, prompts, epoch, device) -> float:
    """The on-policy refresh at the start of an epoch (``sample_beliefs`` over every forget prompt)."""
    sync(device)
    t = time.perf_counter()
    assert cache.maybe_refresh(model, tokenizer, epoch=epoch, step=0, prompts_by_index=prompts)
    sync(device)
    return time.perf_counter() - t


def floor_tokens(forget, beliefs, method) -> tuple[float, float]:
    """(tokens a BS-S step of ``method`` sends through forward + backward, tokens of the NPO step) on this batch,
    padding excluded. BS-S: every forget row and (the expected number of) belief rows, prompt + answer each; with
    ``belief_subsample`` m an item with N_i answered beliefs sends min(m, N_i) of them, each of mean length; with
    ``share_prefix`` an item's prompt is counted once per packed sequence (once when 1 + N ≤ belief_microbatch).
    NPO: the forget rows (forward + backward, and a reference forward on the same tokens)."""
    by_item: dict[int, list] = {}
    for owner, row in zip(beliefs["owner_index"].tolist(), prefix.split_rows(beliefs)):
        if row is not None:
            by_item.setdefault(owner, []).append(row)
    bs_s = npo = 0.0
    for index, (prompt, answer, _) in zip(forget["index"].tolist(), prefix.split_rows(forget)):
        rows = by_item.get(index, [])
        kept = len(rows) if method.belief_subsample is None else min(method.belief_subsample, len(rows))
        answers = len(answer) + (kept / len(rows) * sum(len(a) for _, a, _ in rows) if rows else 0.0)
        prompts = math.ceil((1 + kept) / method.belief_microbatch) if method.share_prefix else 1 + kept
        bs_s += prompts * len(prompt) + answers
        npo += len(prompt) + len(answer)
    return bs_s, npo


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


def peak_step_memory(model, forget, beliefs, microbatch, device, **bs_s_fields) -> tuple[int, int]:
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
        forget_backward(make_method("bs_s", belief_microbatch=microbatch, **bs_s_fields), model, forget, beliefs)
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
        help="epochs per method; a step time is the mean over batches of each batch's median over the epochs "
        "(default: 10 with --quick, else 5)",
    )
    parser.add_argument(
        "--base",
        default="bs_t",
        choices=("bs_t", "ga", "npo", "wga"),
        help="BS-S base loss L_base (default: %(default)s, the paper's best; ga shows the floor without BS-T's top-k)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one BS-T step and one BS-S step (exact, and m=1 with prefix sharing) at V=128256 with "
        "torch.profiler and print the top operators by self time (default: off)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random model, the workload and belief sampling (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench = _Bench.build(args, device)
    runs = step_times(bench)
    exact = runs["bs_s"]
    profile_epoch(bench, exact)
    generation_throughput(bench)
    peak_memory(bench)
    if args.profile:
        profile_steps(args, device)


N_BELIEFS, MICROBATCH = 3, 8
"""The BS-S settings every section measures: N beliefs per item, belief rows per forward."""


def _check_args(parser, args) -> None:
    problems = [
        p
        for name in ("threads", "items", "batch_size", "answer_len", "prompt_len", "repeats")
        for p in files.at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    ]
    problems += files.at_least("--seed", args.seed, 0) + files.device_problems("--device", args.device)
    model = args.model or ""
    not_a_hub_id = model.startswith((".", "/", "~")) or model.count("/") != 1  # a hub id is owner/name
    if model and model != "smollm2" and not_a_hub_id:
        problems += files.path_problems("--model", model, "dir", must_exist=True)
    files.report_problems(parser, problems)


class _Bench:
    """What every section measures on: the model (training) and its frozen reference, the tokenizer, the forget
    prompts and batches, the device and the sizes."""

    def __init__(self, args, device, model, tokenizer, source: str):
        self.args, self.device, self.model, self.tokenizer = args, device, model, tokenizer
        self.items = args.items or (16 if args.quick else 32)
        self.answer_len = args.answer_len or (16 if args.quick else 32)
        self.repeats = args.repeats or (10 if args.quick else 5)
        model.to(device).train()
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.prompts, rows, labels = make_workload(
            tokenizer, vocab, self.items, args.prompt_len, self.answer_len, args.seed
        )
        self.batches = forget_batches(rows, labels, args.batch_size, tokenizer.pad_token_id)
        print(f"model: {source}")
        print(f"parameters: {sum(p.numel() for p in model.parameters())}")
        print(f"device: {device}")
        print(f"torch threads: {torch.get_num_threads()}")
        print(f"workload: F={self.items} B={args.batch_size} prompt={args.prompt_len} answer={self.answer_len} tokens")
        print(
            f"bs_s settings: N={N_BELIEFS} on_policy refresh_epochs=1 select=sample base={args.base} "
            f"microbatch={MICROBATCH}"
        )

    @classmethod
    def build(cls, args, device) -> _Bench:
        if args.model:
            from bs_ref.models import load_model

            model, tokenizer = load_model(args.model)
            return cls(args, device, model, tokenizer, args.model)
        model, tokenizer = build_small_model(args.quick, args.seed)
        shape = "d=128, 2 layers, V=512" if args.quick else "d=256, 4 layers, V=2048"
        return cls(args, device, model, tokenizer, f"random Llama ({shape})")

    def sampling(self, n: int = N_BELIEFS, regime: str = "off_policy") -> BeliefSampling:
        """Belief sampling of ``n`` answers of the workload's answer length (+ the stop token)."""
        return BeliefSampling(regime, refresh_epochs=1.0, n=n, max_new_tokens=self.answer_len + 1)


def _step_seconds(run) -> float:
    """The mean over the batches of each batch's median step."""
    return statistics.fmean(statistics.median(times) for times in run["steps"])


def step_times(bench: _Bench) -> dict[str, dict]:
    """1. Step time: NPO and the four BS-S variants step by step in turn (contention hits all alike), then the
    ratios, the floors and the generation share are printed. Returns the runs by tag."""
    args, model = bench.args, bench.model
    npo_model = copy.deepcopy(model)
    opt_npo = torch.optim.SGD(npo_model.parameters(), lr=1e-4)
    runs: dict[str, dict] = {"npo": dict(steps=[[] for _ in bench.batches])}
    for tag, label, fields in VARIANTS:
        method = make_method("bs_s", base=args.base, belief_microbatch=MICROBATCH, **fields)
        method.seed_subsample(args.seed)
        run = dict(label=label, method=method, model=copy.deepcopy(model), refresh=[], backward=[], optimiser=[])
        run["cache"] = BeliefCache(bench.sampling(regime="on_policy"), seed=args.seed)
        run.update(steps=[[] for _ in bench.batches], tokens=[])
        run["opt"] = torch.optim.SGD(run["model"].parameters(), lr=1e-4)
        runs[tag] = run
    variants = {tag: run for tag, run in runs.items() if tag != "npo"}
    for epoch in range(-1, bench.repeats):  # epoch -1: warm-up (allocator, kernels), not recorded
        for run in variants.values():
            seconds = refresh_seconds(
                run["model"], bench.tokenizer, run["cache"], bench.prompts, epoch + 1, bench.device
            )
            if epoch >= 0:
                run["refresh"].append(seconds)
        for b, batch in enumerate(bench.batches):
            seconds = npo_step(npo_model, bench.ref_model, batch, opt_npo, bench.device)
            if epoch >= 0:
                runs["npo"]["steps"][b].append(seconds)
            for run in variants.values():
                found = bs_s_step(
                    run["model"],
                    bench.tokenizer,
                    run["cache"],
                    batch,
                    run["opt"],
                    bench.device,
                    run["method"],
                    bench.ref_model,
                )
                if epoch >= 0:
                    fwd_bwd, opt_seconds, tokens = found
                    run["steps"][b].append(fwd_bwd + opt_seconds)
                    run["backward"].append(fwd_bwd)
                    run["optimiser"].append(opt_seconds)
                    run["tokens"].append(tokens)
    _report_step_times(bench, runs)
    return runs


def _report_step_times(bench: _Bench, runs: dict[str, dict]) -> None:
    npo_step_s = _step_seconds(runs["npo"])
    variants = {tag: run for tag, run in runs.items() if tag != "npo"}
    generation = statistics.median([t for run in variants.values() for t in run["refresh"]])  # any variant
    steps_per_epoch = len(bench.batches)
    exact = runs["bs_s"]
    off_policy = _step_seconds(exact)
    bs_step = off_policy + statistics.median(exact["refresh"]) / steps_per_epoch
    print(f"npo step seconds: {npo_step_s:.4f}")
    print(f"bs_s step seconds (amortised, incl. refresh): {bs_step:.4f}")
    print(f"bs_s step seconds (off-policy: beliefs sampled once, no generation in the step): {off_policy:.4f}")
    print(f"bs_s/npo step-time ratio: {off_policy / npo_step_s:.3f}")
    # rows through forward+backward (≈ 3 forward units each): BS-S (1 + N)·B, NPO B plus B reference forwards
    bound = (1 + N_BELIEFS) * 3 / (3 + 1)
    print(f"bs_s/npo compute lower bound without generation ((1+N)*3/(3+1), equal lengths): {bound:.2f}")
    print(f"bs_s step over its compute lower bound: {off_policy / npo_step_s / bound:.3f}")
    ratio = off_policy / npo_step_s
    print(f"bs_s/npo step-time ratio without the refresh (off-policy after its one sampling): {ratio:.3f}")
    print(f"bs_s/npo step-time ratio on-policy (one refresh per epoch, amortised): {bs_step / npo_step_s:.3f}")
    for tag, run in variants.items():
        if tag != "bs_s":
            print(f"{tag}/npo step-time ratio: {_step_seconds(run) / npo_step_s:.3f}")
    # the floor: tokens × passes (forward + backward ≈ 3 units per token, a reference forward 1) on the batches run
    for run in variants.values():
        bs_tokens, npo_tokens = (sum(x) for x in zip(*run["tokens"]))
        passes = 4 if run["method"].needs_reference else 3  # the NPO base also runs π_ref on every row
        run["floor"] = passes * bs_tokens / (4 * npo_tokens)
        print(f"compute floor ({run['label']}): {run['floor']:.3f}")
    for run in variants.values():
        print(f"measured/floor ({run['label']}): {_step_seconds(run) / npo_step_s / run['floor']:.3f}")
    # generation: an on-policy run pays a refresh every epoch, an off-policy run once before its first step
    print(f"generation seconds per refresh (F={bench.items} prompts x N={N_BELIEFS}): {generation:.4f}")
    for run in variants.values():
        epoch_steps = steps_per_epoch * _step_seconds(run)
        on = generation / (generation + epoch_steps)
        off = generation / (generation + OFF_POLICY_EPOCHS * epoch_steps)
        print(f"generation share of an on-policy step ({run['label']}, one refresh per epoch): {on:.3f}")
        print(
            f"generation share of an off-policy run ({run['label']}, sampled once, {OFF_POLICY_EPOCHS} epochs): "
            f"{off:.3f}"
        )
    for tag, run in variants.items():
        if tag != "bs_s":
            ratio = (_step_seconds(run) + generation / steps_per_epoch) / npo_step_s
            print(f"{tag}/npo step-time ratio on-policy (one refresh per epoch, amortised): {ratio:.3f}")


def profile_epoch(bench: _Bench, exact: dict) -> None:
    """4. Profile of a BS-S epoch: the refresh (generation), then the step split into forget and belief terms."""
    bs_model, device = exact["model"], bench.device
    refresh = statistics.median(exact["refresh"])
    sync(device)
    t = time.perf_counter()
    for batch in bench.batches:
        method = make_method("bs_s", base=bench.args.base)
        forget_backward(method, bs_model, batch, None, ref_model=bench.ref_model)
    sync(device)
    forget_only = time.perf_counter() - t
    bs_model.zero_grad(set_to_none=True)
    steps_per_epoch = len(bench.batches)
    fwd_bwd = steps_per_epoch * statistics.median(exact["backward"])
    optimiser = steps_per_epoch * statistics.median(exact["optimiser"])
    total = refresh + fwd_bwd + optimiser
    parts = {
        "generation (refresh: generate + per-token log-probs)": refresh,
        "forget term forward/backward": min(forget_only, fwd_bwd),
        "belief term forward/backward": max(fwd_bwd - forget_only, 0.0),
        "optimiser step": optimiser,
    }
    for name, seconds in parts.items():
        print(f"profile {name} share: {seconds / total:.3f}")
    print(f"profile epoch seconds: {total:.3f}")


def generation_throughput(bench: _Bench) -> None:
    """2. Generation throughput: 8 prompts batched vs one at a time."""
    model, tokenizer, device = bench.model, bench.tokenizer, bench.device
    eight = [bench.prompts[i % bench.items] for i in range(8)]
    sampling, seed = bench.sampling(), bench.args.seed
    sample_beliefs(model, tokenizer, eight[:1], sampling, batch_size=1, seed=seed)  # warm-up
    batched, sequential = [], []
    for _ in range(bench.repeats):
        sync(device)
        t = time.perf_counter()
        b = sample_beliefs(model, tokenizer, eight, sampling, batch_size=8, seed=seed)
        sync(device)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = sample_beliefs(model, tokenizer, eight, sampling, batch_size=1, seed=seed)
        sync(device)
        sequential.append(time.perf_counter() - t)
    tokens = sum(len(b.answer_ids(i)) for i in range(len(b)))
    tokens_sequential = sum(len(s.answer_ids(i)) for i in range(len(s)))
    print(f"generation batched seconds (8 prompts x N={N_BELIEFS}): {statistics.median(batched):.4f}")
    print(f"generation sequential seconds: {statistics.median(sequential):.4f}")
    print(f"generation batched tokens/s: {tokens / statistics.median(batched):.1f}")
    print(f"generation sequential tokens/s: {tokens_sequential / statistics.median(sequential):.1f}")
    print(f"batched/sequential generation speed-up: {statistics.median(sequential) / statistics.median(batched):.2f}")


def peak_memory(bench: _Bench) -> None:
    """3. Peak memory vs belief_microbatch (N fixed) and vs N (micro-batch fixed, and un-micro-batched)."""
    model, tokenizer, device = bench.model, bench.tokenizer, bench.device
    unit = "MiB (cuda allocator peak)" if device.type == "cuda" else "MiB (autograd saved activations)"
    saved = "MiB (autograd saved activations)"
    forget = bench.batches[0]
    big = BeliefCache(bench.sampling(n=8))
    big.refresh(model, tokenizer, {i: bench.prompts[i] for i in forget["index"].tolist()})
    pad = tokenizer.pad_token_id
    for mb in (1, 2, 4, 8, 16):
        beliefs = _first_n_beliefs(big, forget, N_BELIEFS, pad)
        peak, belief_peak = peak_step_memory(model, forget, beliefs, mb, device)
        print(f"peak memory step N={N_BELIEFS} belief_microbatch={mb} {unit}: {peak / 2**20:.2f}")
        print(f"peak memory belief term N={N_BELIEFS} belief_microbatch={mb} {saved}: {belief_peak / 2**20:.2f}")
    for n in (1, 2, 4, 8):
        beliefs = _first_n_beliefs(big, forget, n, pad)
        peak, _ = peak_step_memory(model, forget, beliefs, MICROBATCH, device)
        whole, _ = peak_step_memory(model, forget, beliefs, beliefs["input_ids"].shape[0], device)
        print(f"peak memory step N={n} belief_microbatch={MICROBATCH} {unit}: {peak / 2**20:.2f}")
        print(f"peak memory step N={n} un-micro-batched {unit}: {whole / 2**20:.2f}")
    for n in (1, 2, 4, 8):  # prefix sharing: at most belief_microbatch branches per forward, whatever N
        beliefs = _first_n_beliefs(big, forget, n, pad)
        peak, _ = peak_step_memory(model, forget, beliefs, MICROBATCH, device, share_prefix=True)
        print(f"peak memory step N={n} belief_microbatch={MICROBATCH} shared prefix {unit}: {peak / 2**20:.2f}")


def profile_steps(args, device, vocab: int = 128256, rows: int = 4, answer_len: int = 32, top: int = 12) -> None:
    """torch.profiler tables (top operators by self time) of one BS-T step and of one BS-S step (N = 3 beliefs of the
    forget answers' length; exact, and m = 1 with prefix sharing) on a random Llama with a Llama-3 vocabulary (tied
    embeddings, d = 128, 2 layers): forward + backward of the forget term + optimiser step, after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    from bs_ref.models import TinyLlamaConfig, build_tiny_llama

    cfg = TinyLlamaConfig(hidden_size=128, intermediate_size=344, num_layers=2, num_heads=2, vocab_size=vocab)
    model = build_tiny_llama(vocab, cfg, seed=args.seed).to(device).train()
    g = torch.Generator().manual_seed(args.seed)
    prompt_len = args.prompt_len
    ids = torch.randint(3, vocab, (rows, prompt_len + answer_len), generator=g)
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE_INDEX
    forget = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "index": torch.arange(rows)}
    belief_ids = torch.cat(
        [ids[:, :prompt_len].repeat_interleave(3, 0), torch.randint(3, vocab, (3 * rows, answer_len), generator=g)],
        dim=1,
    )
    belief_labels = belief_ids.clone()
    belief_labels[:, :prompt_len] = IGNORE_INDEX
    beliefs = {
        "input_ids": belief_ids,
        "labels": belief_labels,
        "attention_mask": torch.ones_like(belief_ids),
        "owner_index": torch.arange(rows).repeat_interleave(3),
    }
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    batch = {k: v.to(device) for k, v in forget.items()}
    cases = (
        ("bs_t", make_method("bs_t"), None),
        ("bs_s", make_method("bs_s"), beliefs),
        ("bs_s(m=1,shared)", make_method("bs_s", share_prefix=True, belief_subsample=1), beliefs),
    )
    print(
        f"profile model: random Llama (d=128, 2 layers, V={vocab}), B={rows} prompt={prompt_len} "
        f"answer={answer_len} tokens, N=3 beliefs of {answer_len} tokens"
    )

    def step(method, belief_batch):
        forget_backward(method, model, batch, belief_batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)

    for name, method, belief_batch in cases:
        step(method, belief_batch)  # warm-up
        t = time.perf_counter()
        with profile(activities=activities) as prof:
            step(method, belief_batch)
        print(f"profile {name} step seconds (under the profiler): {time.perf_counter() - t:.3f}")
        print(prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=48))


def _first_n_beliefs(cache, forget, n, pad_id):
    """The first n cached beliefs of each forget item (empty answers included so every N has n·B rows)."""
    ids, labels = [], []
    for i in forget["index"].tolist():
        for b in cache.entries[i][:n]:
            ids.append(b.input_ids)
            labels.append(b.labels)
    return right_pad(ids, labels, pad_id)


if __name__ == "__main__":
    with files.one_line_errors("bench_bs_s.py"):
        main()

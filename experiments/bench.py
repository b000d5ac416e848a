"""Speed and memory benchmarks of bs_ref, measured as ratios within one run.

    python experiments/bench.py losses            # BS-T vs GA vs the dense formulation, V = 128256 and 49152
    python experiments/bench.py losses --quick    # smaller T, fewer repeats
    python experiments/bench.py bs_s [--quick]    # BS-S step time vs NPO, batched belief generation
    python experiments/bench.py precision         # bf16 autocast vs fp32: train step and generation speed-ups
    python experiments/bench.py evaluation --data <TOFU directory>   # the fair tier's final evaluation by part

``losses`` times forward+backward of ``bs_t_loss``, ``ga_loss`` and the authors' dense BS-T formulation
(one-hot, top-k mask and soft-target tensors of size B×T×|V|) on logits [B, T, V] that require grad, and
measures each variant's peak memory *above the inputs*:

- on CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- on CPU: each variant runs in a fresh child process; the kernel's peak-RSS counter is reset once the inputs
  exist (``/proc/self/clear_refs``), and the peak (VmHWM) minus the resident memory at that moment is the
  variant's extra memory (the gradient buffer of the logits, which every variant needs, included).

Targets (issue "Foundation"): BS-T/GA time ≤ 1.10; BS-T's extra memory over GA is O(B·T·k), i.e. ≥ 10× below
the dense formulation's extra memory over GA. Output: ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

import torch

from bs_ref import files
from bs_ref.losses import bs_t_loss, ga_loss

IGNORE_INDEX = -100


def dense_bs_t_loss(logits, labels, lam=0.2, top_k=20, temperature=1.0):
    """The dense formulation (as in the authors' fork): B×T×|V| one-hot, mask and target tensors."""
    logits = logits[:, :-1]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1)
    top_idx = logits.detach().topk(top_k, dim=-1).indices
    in_topk = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top_idx, True)
    belief = torch.softmax((logits.detach() / temperature).masked_fill(~in_topk, float("-inf")), -1)
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    target = lam * belief + (1 - lam) * one_hot
    ce = -(target * logp).sum(-1)
    per_row = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
    return -per_row[mask.any(1)].mean()


VARIANTS = {
    "ga": lambda lg, lb: ga_loss(lg, lb),
    "bs_t": lambda lg, lb: bs_t_loss(lg, lb, lam=0.2, top_k=20),
    "dense_bs_t": dense_bs_t_loss,
}


def make_inputs(batch, seq, vocab, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(batch, seq, vocab, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, : seq // 8] = IGNORE_INDEX  # a short prompt
    return logits, labels.to(device)


def time_variant(name, logits, labels, repeats, device):
    fn = VARIANTS[name]
    times = []
    for i in range(repeats + 1):
        logits.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(logits, labels).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cpu_peak_child(name, batch, seq, vocab, dtype_name, queue):
    torch.set_num_threads(torch.get_num_threads())
    logits, labels = make_inputs(batch, seq, vocab, "cpu", getattr(torch, dtype_name))
    VARIANTS[name](logits[:1, :8], labels[:1, :8]).backward()  # warm up lazy initialisation
    logits.grad = None
    _reset_peak_rss()
    before = _status_bytes("VmRSS")
    VARIANTS[name](logits, labels).backward()
    queue.put(max(0, _status_bytes("VmHWM") - before))


def peak_extra_bytes(name, batch, seq, vocab, device, dtype):
    if device == "cuda":
        logits, labels = make_inputs(batch, seq, vocab, device, dtype)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        VARIANTS[name](logits, labels).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(name, batch, seq, vocab, str(dtype).split(".")[-1], queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


LOSSES_SUMMARY = "time and peak memory: BS-T vs GA vs the dense BS-T form"


def losses_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options of ``bench.py losses``."""
    ap = argparse.ArgumentParser(prog="bench.py losses", description=__doc__.split("\n\n")[0], add_help=add_help)
    ap.add_argument("--batch", type=int, default=4, help="batch size B of the logits (default: %(default)s)")
    ap.add_argument("--seq", type=int, default=256, help="sequence length T (default: %(default)s; 64 with --quick)")
    ap.add_argument(
        "--vocab", type=int, nargs="+", default=[128256, 49152], help="vocabulary sizes V (default: 128256 49152)"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed calls per round, median (default: %(default)s; 2 with --quick)"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds over the variants (default: %(default)s; 2 with --quick)",
    )
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s; cuda when available, else cpu)",
    )
    ap.add_argument(
        "--dtype", default=None, help="logits dtype, a torch dtype name (default: float32 on CPU, bfloat16 on CUDA)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="T = 64, 2 repeats, 2 rounds; overrides those options (default: off)"
    )
    return ap


def bench_losses(argv=None):
    parser = losses_parser()
    args = parser.parse_args(argv)
    problems = [
        p for name in ("batch", "seq", "repeats", "rounds") for p in files.at_least(f"--{name}", getattr(args, name), 1)
    ]
    problems += [p for v in args.vocab for p in files.at_least("--vocab", v, 21, "top-k is 20")]
    problems += files.device_problems("--device", args.device) + files.dtype_problems("--dtype", args.dtype)
    files.report_problems(parser, problems)
    if args.quick:
        args.seq, args.repeats, args.rounds = 64, 2, 2
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    print(f"device: {args.device}")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"shape: B={args.batch} T={args.seq} dtype={str(dtype).split('.')[-1]} k=20")
    for vocab in args.vocab:
        logits, labels = make_inputs(args.batch, args.seq, vocab, args.device, dtype)
        times = {}
        # interleave the variants so drifting machine load hits all of them alike
        rounds = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                rounds[name].append(time_variant(name, logits, labels, args.repeats, args.device))
        times = {name: statistics.median(v) for name, v in rounds.items()}
        del logits, labels
        mem = {name: peak_extra_bytes(name, args.batch, args.seq, vocab, args.device, dtype) for name in VARIANTS}
        for name in VARIANTS:
            print(f"V={vocab} {name} fwd+bwd seconds: {times[name]:.4f}")
            print(f"V={vocab} {name} peak extra MiB: {mem[name] / 2**20:.1f}")
        print(f"V={vocab} bs_t/ga time ratio: {times['bs_t'] / times['ga']:.3f}")
        print(f"V={vocab} dense/ga time ratio: {times['dense_bs_t'] / times['ga']:.3f}")
        extra_bst = max(mem["bs_t"] - mem["ga"], 0)
        extra_dense = max(mem["dense_bs_t"] - mem["ga"], 0)
        print(f"V={vocab} bs_t extra memory over ga MiB: {extra_bst / 2**20:.1f}")
        print(f"V={vocab} dense extra memory over ga MiB: {extra_dense / 2**20:.1f}")
        bound = args.batch * args.seq * 21 * 8 * 4  # O(B·T·k): a few [B·T, k+1] float/int64 buffers
        print(f"V={vocab} O(B*T*k) reference MiB: {bound / 2**20:.1f}")
        ratio = extra_dense / max(extra_bst, bound)
        print(f"V={vocab} dense/bs_t extra-memory ratio (bs_t extra floored at the O(BTk) reference): {ratio:.1f}")


class _CommandsFormatter(argparse.HelpFormatter):
    """Keeps each sub-command's summary on its line: argparse measures the sub-command names without the two
    columns of indentation it then prints them with."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def main_parser() -> argparse.ArgumentParser:
    """``bench.py COMMAND [options]``: the sub-commands and their options (the same parsers they run with)."""
    from bench_bs_s import SUMMARY as BS_S_SUMMARY  # experiments/bench_bs_s.py
    from bench_bs_s import build_parser as bs_s_parser
    from bench_eval import SUMMARY as EVALUATION_SUMMARY  # experiments/bench_eval.py
    from bench_eval import build_parser as evaluation_parser
    from bench_precision import SUMMARY as PRECISION_SUMMARY  # experiments/bench_precision.py
    from bench_precision import build_parser as precision_parser

    ap = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0] + " Output: 'name: value' lines.",
        epilog="Options of a sub-command: python experiments/bench.py COMMAND --help",
        formatter_class=_CommandsFormatter,
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary, parent in (
        ("losses", LOSSES_SUMMARY, losses_parser(add_help=False)),
        ("bs_s", BS_S_SUMMARY, bs_s_parser(add_help=False)),
        ("precision", PRECISION_SUMMARY, precision_parser(add_help=False)),
        ("evaluation", EVALUATION_SUMMARY, evaluation_parser(add_help=False)),
    ):
        sub.add_parser(name, parents=[parent], help=summary, description=parent.description)
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    main_parser().parse_args(argv)  # --help, a missing or unknown COMMAND, bad options: exits here
    if argv[0] == "losses":
        bench_losses(argv[1:])
    elif argv[0] == "evaluation":
        from bench_eval import main as bench_evaluation  # experiments/bench_eval.py

        bench_evaluation(argv[1:])
    elif argv[0] == "precision":
        from bench_precision import main as bench_precision  # experiments/bench_precision.py

        bench_precision(argv[1:])
    else:
        from bench_bs_s import main as bench_bs_s  # experiments/bench_bs_s.py

        bench_bs_s(argv[1:])
    return 0


if __name__ == "__main__":
    with files.one_line_errors("bench.py"):
        sys.exit(main())

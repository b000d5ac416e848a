"""SEQ1, SEQ2: squeezing at the level of whole answers, with exact sequence probabilities.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), §3.2 / Fig. 2 (SEQ1:
GA and NPO first raise the model's high-likelihood responses while the target falls) and §6 / Fig. 4 (SEQ2:
under BS-T and BS-S the target and that band fall together).

toy_autoregressive: the ToyAR model (``proofs_check.toy``) trained so that y_u is its top answer
(π(y_u|x) ≈ 0.67) next to a few other believed answers. All 85 answers are enumerated, so π of the target
and of the band (the 3 most likely other answers of θ_o) are exact. Two measurements per method:
    first order   the rates d log π(y_u)/dη and d log π(band)/dη of one SGD step (forward-mode autograd);
                  "band change per nat of target decrease" = rate_band / (−rate_target);
    trajectory    plain SGD steps until log π(y_u) has fallen by ``DROP`` nats (matched decrease; the band
                  is read off by linear interpolation between the two steps around that point).
toy_softmax: the idealisation where every whole answer is one label of a free-logit softmax (K = I over
answers), the setting in which Ren & Sutherland's squeezing is exact.

Methods: GA (Eq. 1), NPO (Eq. 3, β = 0.1, reference θ_o), the control GA×(1−λ), BS-T (Eq. 5–6, λ = 0.2,
k = 3 of V = 5, τ ∈ {1, 2, 4}), BS-S (Eq. 7, BS-T base, λ_BSS = 0.5, off-policy beliefs = the 3 most likely
answers of θ_o, fixed). With plain SGD, GA×(1−λ) at matched decrease is GA exactly (a rescaled loss is a
rescaled step): a belief effect is only what BS-T does beyond it.
"""

from __future__ import annotations

import torch

from bs_ref.analysis.dynamics import band_logprob, linearised_change, parameter_gradient
from bs_ref.losses import bs_s_combine, bs_t_loss, ga_loss, ga_scaled_loss, npo_loss, sequence_logprob

from ._core import checker, claim
from ._util import Tally, evidence, free_rate, gen, rnd
from .squeezing_claims import toy_case
from .toy import random_logits

claim(
    "SEQ1",
    "at sequence level, GA/NPO on y_u first raise the likelihood of the model's high-likelihood responses (the top "
    "band of its beliefs) while y_u falls",
    "Li et al. 2026, §3.2, Fig. 2",
    "band = the 3 most likely answers of θ_o other than y_u; plain SGD",
)
claim(
    "SEQ2",
    "under BS-T and BS-S, the target and the high-likelihood band fall together (no squeeze), at matched decrease "
    "of the target",
    "Li et al. 2026, §6, Fig. 4",
    "band as in SEQ1; compared with the control GA×(1−λ) at matched decrease of log π(y_u)",
)

LAM, TOP_K, LAM_BSS = 0.2, 3, 0.5
DROP, LR, MAX_STEPS = 0.5, 0.04, 200
SEEDS = (0, 1, 2)


def methods(case) -> dict:
    """name -> loss(z_all_rows) on the batch [forget row; belief rows] (see ``loss_batch``)."""
    fn, params = case.fn_params()
    forget = case.rows([case.target])
    beliefs = case.rows(case.beliefs)
    with torch.no_grad():
        ref = sequence_logprob(fn(params, forget["input_ids"]), forget["labels"])
    lf, lb = forget["labels"], beliefs["labels"]
    out = {
        "GA": lambda z: ga_loss(z[:1], lf),
        "NPO": lambda z: npo_loss(z[:1], lf, ref),
        "GA×(1−λ)": lambda z: ga_scaled_loss(z[:1], lf, LAM),
    }
    for tau in (1.0, 2.0, 4.0):
        out[f"BS-T τ={tau:g}"] = lambda z, t=tau: bs_t_loss(z[:1], lf, LAM, TOP_K, t)
    kw = {"lam": LAM, "top_k": TOP_K}
    out["BS-S"] = lambda z: bs_s_combine(bs_t_loss(z[:1], lf, **kw), bs_t_loss(z[1:], lb, **kw), LAM_BSS)
    out["BS-S (GA base)"] = lambda z: bs_s_combine(ga_loss(z[:1], lf), ga_loss(z[1:], lb), LAM_BSS)
    return out


def loss_batch(case) -> torch.Tensor:
    return torch.cat([case.rows([case.target])["input_ids"], case.rows(case.beliefs)["input_ids"]])


def first_order(case, loss) -> tuple[float, float]:
    """(d log π(y_u)/dη, d log π(band)/dη) for one SGD step, exact by enumeration + forward-mode autograd."""
    fn, params = case.fn_params()
    b = case.batch
    rate = linearised_change(
        fn, params, loss_batch(case), loss, b["input_ids"], lambda z: sequence_logprob(z, b["labels"]), 1.0
    )
    logp = case.logprobs()
    w = torch.softmax(logp[case.band], 0)
    return float(rate[case.target]), float((w * rate[case.band]).sum())


def trajectory(case, loss, drop: float = DROP, lr: float = LR, max_steps: int = MAX_STEPS) -> dict:
    """SGD until log π(y_u) fell by ``drop``; band log-mass change there (interpolated), and its maximum before."""
    fn, params = case.fn_params()
    b = case.batch
    ids = loss_batch(case)
    logp0 = case.logprobs()
    t0, band0 = float(logp0[case.target]), float(band_logprob(logp0, case.band))
    prev = (0.0, 0.0)
    band_max = 0.0
    for step in range(1, max_steps + 1):
        grads = parameter_gradient(fn, params, ids, loss)
        params = {n: v - lr * grads[n] for n, v in params.items()}
        with torch.no_grad():
            logp = sequence_logprob(fn(params, b["input_ids"]), b["labels"])
        d_target, d_band = float(logp[case.target]) - t0, float(band_logprob(logp, case.band)) - band0
        if d_target <= -drop:
            frac = (-drop - prev[0]) / (d_target - prev[0])
            band_at = prev[1] + frac * (d_band - prev[1])
            return {"steps": step, "band_at_drop": band_at, "band_max_before": max(band_max, band_at), "reached": True}
        band_max = max(band_max, d_band)
        prev = (d_target, d_band)
    return {
        "steps": max_steps,
        "band_at_drop": None,
        "band_max_before": band_max,
        "reached": False,
        "d_target": prev[0],
    }


def measure_case(case, names: tuple[str, ...] | None = None) -> dict:
    out = {}
    for name, loss in methods(case).items():
        if names is not None and name not in names:
            continue
        r_t, r_b = first_order(case, loss)
        out[name] = {"rate_target": r_t, "rate_band": r_b, **trajectory(case, loss)}
    return out


_CACHE: dict = {}


def measured(seed: int) -> dict:
    if seed not in _CACHE:
        _CACHE[seed] = measure_case(toy_case(seed))
    return _CACHE[seed]


def mean_band_change(names: tuple[str, ...]) -> dict[str, float | None]:
    """Band log-mass change at the matched target decrease, averaged over the seeds, per method."""
    out = {}
    for name in names:
        values = [measured(s)[name]["band_at_drop"] for s in SEEDS]
        key = f"{name} band Δ at target −{DROP}"
        out[key] = None if any(v is None for v in values) else rnd(sum(values) / len(values), 3)
    return out


def _row(name: str, m: dict) -> str:
    per_nat = m["rate_band"] / -m["rate_target"] if m["rate_target"] < 0 else float("nan")
    traj = (
        f"band {m['band_at_drop']:+.3f} at target −{DROP}"
        if m["reached"]
        else (f"target never fell {DROP} nats in {m['steps']} steps (Δ={m.get('d_target', 0):+.3f})")
    )
    if m["rate_target"] >= 0:
        return f"{name}: target first RISES (d log π(y_u)/dη = {m['rate_target']:+.3f}); {traj}"
    return f"{name}: band/target-nat {per_nat:+.3f}; {traj}"


@checker("SEQ1", "toy_autoregressive")
def seq1_toy_ar(**_):
    tally, rows = Tally(), {}
    for seed in SEEDS:
        m = measured(seed)
        case = toy_case(seed)
        for name in ("GA", "NPO"):
            r = m[name]
            ok = r["rate_target"] < 0 and r["rate_band"] > 0
            tally.add(
                ok,
                f"ToyAR seed {seed}, {name}: d log π(y_u)/dη = {r['rate_target']:+.3f}, "
                f"d log π(band)/dη = {r['rate_band']:+.3f}",
            )
        rows[f"seed {seed} (π(y_u)={case.info['p_target']:.2f})"] = [_row(n, m[n]) for n in ("GA", "NPO")]
    return evidence(
        "toy_autoregressive",
        tally,
        f"ToyAR seeds {SEEDS}: 85 enumerated answers; band = top-3 other answers of θ_o; SGD lr {LR}",
        {**mean_band_change(("GA", "NPO")), **rows},
    )


@checker("SEQ2", "toy_autoregressive")
def seq2_toy_ar(**_):
    tally, rows = Tally(), {}
    for seed in SEEDS:
        m = measured(seed)
        for name in ("BS-T τ=1", "BS-S"):
            r = m[name]
            ok = r["reached"] and r["band_at_drop"] < 0
            tally.add(
                ok,
                f"ToyAR seed {seed}, {_row(name, r)} (control GA×(1−λ): {_row('', m['GA×(1−λ)'])[2:]})",
            )
        rows[f"seed {seed} (π(y_u)={toy_case(seed).info['p_target']:.2f})"] = [_row(n, m[n]) for n in m]
    return evidence(
        "toy_autoregressive",
        tally,
        f"ToyAR seeds {SEEDS}: BS-T (λ={LAM}, k={TOP_K}, τ=1) and BS-S (λ_BSS={LAM_BSS}, BS-T base) vs GA×(1−λ), "
        f"matched decrease of {DROP} nats",
        {**mean_band_change(("GA×(1−λ)", "BS-T τ=1", "BS-S")), **rows},
    )


# ----------------------------------------------------------------------------------------------------
# toy_softmax: whole answers as labels of one free-logit softmax
# ----------------------------------------------------------------------------------------------------


def answer_softmax_instances(n: int = 40, seed: int = 81):
    """Free logits over 20 'answers': the target is the top one (π ≈ 0.4-0.95), a random tail behind it."""
    g = gen(seed)
    for i in range(n):
        z = random_logits(g, 20, 1.5)
        y = int(z.argmax())
        z[y] += 1.0 + 3.0 * i / n
        yield z, y


def softmax_rates(z: torch.Tensor, y: int) -> dict:
    p = torch.softmax(z, -1)
    band = [int(v) for v in torch.argsort(p, descending=True) if int(v) != y][:3]
    beliefs = [int(v) for v in torch.argsort(p, descending=True)[:3]]
    w = torch.softmax(torch.log(p[band]), 0)

    def rates(r):
        return float(r[y]), float((w * r[band]).sum())

    out = {
        "GA": rates(free_rate(z, ga_loss, y)),
        "GA×(1−λ)": rates(free_rate(z, ga_scaled_loss, y, lam=LAM)),
        "BS-T τ=1": rates(free_rate(z, bs_t_loss, y, lam=LAM, top_k=TOP_K)),
    }
    bss = (1 - LAM_BSS) * free_rate(z, bs_t_loss, y, lam=LAM, top_k=TOP_K) + LAM_BSS / len(beliefs) * sum(
        free_rate(z, bs_t_loss, b, lam=LAM, top_k=TOP_K) for b in beliefs
    )  # Eq. 7 on free logits: the step is linear in the per-row residuals
    out["BS-S"] = rates(bss)
    out["p_target"] = float(p[y])
    return out


@checker("SEQ1", "toy_softmax")
def seq1_toy_softmax(**_):
    tally = Tally()
    for z, y in answer_softmax_instances():
        r = softmax_rates(z, y)
        t, b = r["GA"]
        tally.add(t < 0 and b > 0, f"π(y_u)={r['p_target']:.3f}: target rate {t:+.3f}, band rate {b:+.3f}")
    return evidence("toy_softmax", tally, "40 free-logit softmaxes over 20 whole answers, target = top answer")


@checker("SEQ2", "toy_softmax")
def seq2_toy_softmax(**_):
    tally, examples = Tally(), []
    region = {f"λ={lam} τ={tau:g}": [0, 0, 0] for lam in (0.2, 0.5, 0.8) for tau in (1.0, 2.0, 4.0)}
    for z, y in answer_softmax_instances():
        r = softmax_rates(z, y)
        per_nat = {k: v[1] / -v[0] if v[0] < 0 else float("nan") for k, v in r.items() if k != "p_target"}
        for name in ("BS-T τ=1", "BS-S"):
            tally.add(
                r[name][0] < 0 and r[name][1] < 0,
                f"π(y_u)={r['p_target']:.3f}: {name} band/target-nat {per_nat[name]:+.3f} "
                f"(GA×(1−λ) {per_nat['GA×(1−λ)']:+.3f})",
            )
        if len(examples) < 4:
            examples.append({"p_target": rnd(r["p_target"], 3), **{k: rnd(v, 3) for k, v in per_nat.items()}})
        p = torch.softmax(z, -1)
        band = [int(v) for v in torch.argsort(p, descending=True) if int(v) != y][:3]
        w = torch.softmax(torch.log(p[band]), 0)
        for lam in (0.2, 0.5, 0.8):
            for tau in (1.0, 2.0, 4.0):
                rate = free_rate(z, bs_t_loss, y, lam=lam, top_k=TOP_K, temperature=tau)
                cell = region[f"λ={lam} τ={tau:g}"]
                cell[0] += float(rate[y]) < 0
                cell[1] += float((w * rate[band]).sum()) < 0
                cell[2] += float(rate[y]) < 0 and float((w * rate[band]).sum()) < 0
    n = sum(1 for _ in answer_softmax_instances())
    return evidence(
        "toy_softmax",
        tally,
        f"{n} free-logit softmaxes over 20 whole answers (target = top answer, π 0.3-0.95); first-order rates",
        {
            "band change per nat of target decrease": examples,
            "BS-T (k=3) region: instances with target↓ / band↓ / both": {
                k: f"{a}/{b}/{c} of {n}" for k, (a, b, c) in region.items()
            },
        },
    )

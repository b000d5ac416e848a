"""bs_ref.protocol.ablations: the refresh and sensitivity ablations (docs/theory.md §13).

- the spec lists: sizes, every spec accepted by ``cli.resolve_methods`` with a distinct label (also under
  run-wide settings), k within every vocabulary the experiment uses, and what happens when k exceeds V;
- the ``--ablation`` problem messages;
- the analysis on fabricated results: seconds per step, measures and intervals, BS-T minus GA×(1−λ);
- the Markdown, the CSVs and the plots (and the line that says why without matplotlib);
- the no-tuning temperature: the sign condition it promises holds on a toy softmax.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bs_ref.losses import bs_t_loss
from bs_ref.methods import method_from_spec
from bs_ref.models import train_tokenizer
from bs_ref.protocol import ablations, plots
from bs_ref.protocol.cli import resolve_methods
from bs_ref.protocol.tables import summary_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- specs
def test_spec_lists_have_the_grid_and_distinct_labels_the_experiment_accepts():
    refresh, sensitivity = ablations.ABLATIONS["refresh"], ablations.ABLATIONS["sensitivity"]
    assert len(refresh) == 12 and len(sensitivity) == 60 + 5 + 5 + 60 + 3  # BS-T, its 3 controls, BS-S
    declared = [method_from_spec(s) for s in refresh]
    assert {(m.regime, m.refresh_epochs if m.regime == "on_policy" else None, m.n_beliefs) for m in declared} == {
        (r, p, n)
        for r, p in (("off_policy", None), ("on_policy", 2), ("on_policy", 1), ("on_policy", 0))
        for n in (1, 3, 5)
    }
    bs_t = [method_from_spec(s) for s in sensitivity if s.startswith("bs_t:")]
    assert {(m.lam, m.top_k, m.temperature) for m in bs_t} == {
        (lam, k, tau) for lam in (0.1, 0.2, 0.4, 0.6, 0.8) for k in (1, 5, 20, 100) for tau in (1, 2, 4)
    }
    assert {method_from_spec(s).lam for s in sensitivity if s.startswith("ga_scaled:")} == {0.1, 0.2, 0.4, 0.6, 0.8}
    assert {method_from_spec(s).lam for s in sensitivity if s.startswith("sga:")} == {0.1, 0.2, 0.4, 0.6, 0.8}
    matched = [method_from_spec(s) for s in sensitivity if s.startswith("ga_target_matched:")]
    assert {(m.lam, m.top_k, m.temperature) for m in matched} == {(m.lam, m.top_k, m.temperature) for m in bs_t}
    assert {method_from_spec(s).lam_bss for s in sensitivity if s.startswith("bs_s:")} == {0.25, 0.5, 0.75}
    for settings in (None, {"lam": 0.4, "top_k": 5, "regime": "on_policy", "refresh_epochs": 0.0, "n_beliefs": 5}):
        for name, specs in ablations.ABLATIONS.items():
            plan, problems = resolve_methods(specs, settings)
            assert problems == [] and len(plan) == len(specs), name  # every spec runs, each with its own label
            assert len({label for label, _ in plan}) == len(specs)
    both = ablations.ablation_specs(["refresh", "sensitivity", "refresh"])
    assert len(both) == 145 and len(set(both)) == 145
    plan, _ = resolve_methods(both)  # BS-S at its defaults is in both ablations: the experiment runs it once
    assert len(plan) == 144 and "bs_s" in dict(plan)


def test_ablation_problems_name_the_flag_and_the_choices():
    assert ablations.ablation_problems(["refresh", "sensitivity"]) == []
    (problem,) = ablations.ablation_problems(["refrsh", "refrsh"])
    assert "--ablation 'refrsh'" in problem and "refresh, sensitivity" in problem
    with pytest.raises(ValueError, match="--ablation 'x'"):
        ablations.ablation_specs(["x"])


def test_top_k_fits_every_vocabulary_and_a_larger_k_is_reported_not_clamped():
    largest = max(m.top_k for m in map(method_from_spec, ablations.ablation_specs(["sensitivity"])) if m.name == "bs_t")
    assert largest == 100 <= ablations.SMALLEST_SYNTHETIC_VOCAB <= len(train_tokenizer(["a b"], 300))
    assert ablations.vocab_problems(ablations.ABLATIONS["sensitivity"], 1024) == []
    problems = ablations.vocab_problems(ablations.ABLATIONS["sensitivity"], 50)
    assert len(problems) == 30 and all("top_k=100 exceeds the vocabulary (50 tokens)" in p for p in problems)
    logits, labels = torch.randn(1, 4, 50), torch.tensor([[-100, 1, 2, 3]])
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 50\]"):
        bs_t_loss(logits, labels, top_k=100)  # what a run would hit at its first step


# --------------------------------------------------------------------------------------------- analysis
def fake_result(label: str, seed: int, leak: float, drop: float, band: float, train_s: float, steps: int = 10):
    curve = [
        {"step": 0, "band_high_logprob": -1.0, "eval_s": 5.0},
        {"step": 5, "band_high_logprob": -1.0 - band / 2, "eval_s": 1.0},
        {"step": steps, "band_high_logprob": -1.0 - band, "eval_s": 1.0},
    ]
    metrics = {"fact_leak": leak, "forget_rougeL": 0.5, "target_logprob_drop": drop, "model_utility": 0.9}
    return {
        "method": label,
        "seed": seed,
        "pair_seed": 0,
        "metrics": metrics,
        "curve": curve,
        "steps": steps,
        "train_s": train_s,
    }


def with_intervals(rows: list[dict]) -> list[dict]:
    """Interval cells as the report fills them: value ± 0.1 on run and mean rows."""
    for row in rows:
        for m in ablations.MEASURES:
            value = row.get(m)
            ok = row["seed"] != "std" and value not in ("", None)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = (value - 0.1, value + 0.1) if ok else ("", "")
    return rows


def test_refresh_rows_read_cost_measures_and_intervals():
    labels = [label for label, _ in ablations.members("refresh")]
    results = []
    for i, label in enumerate(labels[:6]):  # half the settings ran; two seeds each
        results += [fake_result(label, s, 0.1 * i, 1.0 + i, 0.5, train_s=12.0 + 4 * s) for s in (0, 1)]
    rows = ablations.refresh_rows(with_intervals(summary_rows(results)), results)
    assert [r["label"] for r in rows] == labels[:6]
    first = rows[0]
    assert first["period"] == "off-policy (once)" and first["refresh_epochs"] is None and first["n_beliefs"] == 1
    assert first["n_runs"] == 2
    # (train_s − the two light evaluations after step 0) / steps: (12 − 2)/10 and (16 − 2)/10
    assert first["seconds_per_step"] == pytest.approx(1.2) and first["seconds_per_step_min"] == pytest.approx(1.0)
    assert first["seconds_per_step_max"] == pytest.approx(1.4)
    assert rows[3]["period"] == "every 2 epochs" and rows[3]["refresh_epochs"] == 2 and rows[3]["n_beliefs"] == 1
    assert rows[5]["fact_leak"] == pytest.approx(0.5) and rows[5]["fact_leak_ci_low"] == pytest.approx(0.4)
    assert rows[5]["high_band_drop"] == pytest.approx(0.5) and rows[5]["target_logprob_drop"] == pytest.approx(6.0)
    text = ablations.ablation_markdown("refresh", rows)
    assert "| off-policy (once) | 1 | bs_s:n_beliefs=1 | 2 | 1.200 (1.000–1.400) |" in text
    assert "0.500 [0.400, 0.600]" in text and "every 2 epochs" in text and "MU ↑" in text
    assert ablations.seconds_per_step({"train_s": 3.0}) != ablations.seconds_per_step({"train_s": 3.0})  # NaN
    assert ablations.seconds_per_step({"train_s": 3.0, "steps": 3}) == 1.0


def test_sensitivity_rows_compare_bs_t_with_its_controls_at_the_same_settings():
    plan = dict(ablations.members("sensitivity"))
    wanted = {label: m for label, m in plan.items() if getattr(m, "lam", 0.2) in (0.2, 0.6) or m.name == "bs_s"}
    results = []
    for label, m in wanted.items():
        bonus = {"bs_t": 0.3, "ga_target_matched": 0.12, "sga": 0.06}.get(m.name, 0.0)
        lam = getattr(m, "lam", 0.5)
        results.append(fake_result(label, 0, 0.2, 2.0 * lam + bonus, lam + bonus / 3, train_s=10.0))
    rows = ablations.sensitivity_rows(with_intervals(summary_rows(results)), results)
    families = [r["family"] for r in rows]
    assert families.count("bs_t") == 24 and families.count("ga_scaled") == 2 and families.count("bs_s") == 3
    assert families.count("ga_target_matched") == 24 and families.count("sga") == 2
    row = next(r for r in rows if r["family"] == "bs_t" and r["lam"] == 0.6 and r["top_k"] == 100)
    assert row["control"] == "ga_scaled:lam=0.6"
    assert row["target_logprob_drop_vs_control"] == pytest.approx(0.3)
    assert row["high_band_drop_vs_control"] == pytest.approx(0.1)
    control = method_from_spec(row["control_target_matched"])
    assert (control.name, control.lam, control.top_k, control.temperature) == (
        "ga_target_matched",
        0.6,
        100,
        row["temperature"],
    )
    assert row["target_logprob_drop_vs_control_target_matched"] == pytest.approx(0.3 - 0.12)
    assert row["control_sga"] == "sga:lam=0.6" and row["high_band_drop_vs_control_sga"] == pytest.approx(0.08)
    assert {r["lam_bss"] for r in rows if r["family"] == "bs_s"} == {0.25, 0.5, 0.75}
    text = ablations.ablation_markdown("sensitivity", rows)
    assert "target drop − GA×(1−λ)" in text and "| 0.60 | 100 | 4.0 | 1 |" in text and "+0.300" in text
    assert "Controls GA×(1−λ):" in text and "| 0.60 | ga_scaled:lam=0.6 | 1 |" in text and "BS-S:" in text
    assert "target drop − SGA" in text and "Controls GA×(1−λ+λ·q_y):" in text and "| 0.60 | sga:lam=0.6 | 1 |" in text
    assert ablations.ablation_markdown("sensitivity", []) == "No result of the sensitivity ablation in this run."


def test_write_ablations_writes_tables_csvs_and_plots(tmp_path, monkeypatch):
    results = []
    for name in ("refresh", "sensitivity"):
        for i, (label, m) in enumerate(ablations.members(name)):
            if name == "sensitivity" and getattr(m, "lam", 0.2) not in (0.2, 0.6) and m.name != "bs_s":
                continue
            results += [fake_result(label, s, 0.05 * (i % 7), 1.0 + 0.1 * i, 0.2 + 0.01 * i, 8.0 + s) for s in (0, 1)]
    results = list({(r["method"], r["seed"]): r for r in results}.values())  # bs_s is in both ablations
    rows = with_intervals(summary_rows(results))
    lines = ablations.write_ablations(["refresh", "sensitivity"], rows, results, tmp_path)
    text = "\n".join(lines)
    assert "## Ablation: BS-S belief refresh period" in text and "Settings with results: 12 of 12" in text
    assert "Settings with results: 55 of 133" in text  # 24 BS-T at λ 0.2 and 0.6 and their 24 + 2 + 2 controls, 3 BS-S
    for file in ("ablation_refresh.png", "ablation_sensitivity_bs_t.png", "ablation_sensitivity_bs_s.png"):
        assert f"plots/{file}" in text
        assert (tmp_path / "plots" / file).read_bytes().startswith(PNG_MAGIC)
    with open(tmp_path / "ablation_sensitivity.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    families = {"bs_t", "ga_scaled", "ga_target_matched", "sga", "bs_s"}
    assert len(table) == 55 and {r["family"] for r in table} == families
    monkeypatch.setattr(plots, "pyplot", lambda: None)
    lines = ablations.write_ablations(["refresh"], rows, results, tmp_path / "bare")
    assert f"Plots: {plots.PLOTS_SKIPPED}." in lines and not (tmp_path / "bare" / "plots").exists()
    with pytest.raises(ValueError, match="--ablation"):
        ablations.write_ablations(["nope"], rows, results, tmp_path)


# --------------------------------------------------------------------------------------------- no-tuning τ
def toy_batch(seed: int = 0, rows: int = 300, vocab: int = 60, boost: float = 6.0):
    """A softmax per answer token, half of them with the target boosted (confident, memorised-like tokens)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, rows + 1, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (1, rows + 1), generator=g)
    labels[0, 0] = -100
    targets = labels[0, 1:]
    logits[0, torch.arange(0, rows, 2), targets[::2]] += boost  # position i predicts labels[i + 1]
    return logits, labels


def condition(logits, labels, lam: float, k: int, tau: float | torch.Tensor) -> torch.Tensor:
    """λ·q^(τ)[v*] > p[v*] per answer token, computed directly from the definition (docs/theory.md D4); ``tau``
    a number or one per answer token."""
    z, y = logits[0, :-1].double(), labels[0, 1:]
    p = torch.softmax(z, -1)
    v = p.scatter(-1, y[:, None], -1.0).argmax(-1)
    top, idx = z.topk(k, -1)
    tau = torch.as_tensor(tau, dtype=torch.float64).reshape(-1, 1)
    q = torch.zeros_like(p).scatter(-1, idx, torch.softmax(top / tau, -1))
    return lam * q.gather(-1, v[:, None])[:, 0] > p.gather(-1, v[:, None])[:, 0]


@pytest.mark.parametrize(("lam", "k"), [(0.2, 5), (0.6, 5), (0.6, 20), (0.8, 1)])
def test_no_tuning_thresholds_keep_their_sign_promise(lam, k):
    logits, labels = toy_batch()
    thresholds = ablations.runner_up_thresholds(logits, labels, lam, k)
    finite = torch.isfinite(thresholds)
    assert finite.any() and (thresholds[finite] >= 1).all()
    for factor in (1.0, 1.5, 4.0, 1e3):  # at T and at larger τ, each token at its own T
        tau = torch.where(finite, thresholds, torch.ones_like(thresholds)) * factor
        assert condition(logits, labels, lam, k, tau)[finite].all(), factor
    # where no τ >= 1 is guaranteed but v* is in H_k, the limit τ -> ∞ (q -> 1/k) fails: λ/k <= p*
    p, y = torch.softmax(logits[0, :-1].double(), -1), labels[0, 1:]
    v_star = p.scatter(-1, y[:, None], -1.0).argmax(-1)
    in_support = (logits[0, :-1].topk(k, -1).indices == v_star[:, None]).any(-1)
    assert not condition(logits, labels, lam, k, 1e9)[~finite & in_support].any()
    for coverage in (0.1, 0.25):
        tau = ablations.no_tuning_temperature(logits, labels, lam, k, coverage)
        if math.isfinite(tau):
            assert condition(logits, labels, lam, k, tau).double().mean() >= coverage
            assert ablations.sign_fractions(logits, labels, lam, k, tau)["runner_up_down"] >= coverage


def test_no_tuning_rule_on_confident_tokens_needs_tau_above_one_and_reports_the_target_side():
    logits, labels = toy_batch(boost=9.0)
    lam, k = 0.6, 5
    thresholds = ablations.runner_up_thresholds(logits, labels, lam, k)
    confident = torch.arange(thresholds.numel()) % 2 == 0
    assert (thresholds[confident & torch.isfinite(thresholds)] > 1).any()  # τ = 1 fails there: λ < S_k (D4)
    tau = ablations.no_tuning_temperature(logits, labels, lam, k, 0.25)
    assert 1.0 < tau < math.inf
    at_one, at_tau = (ablations.sign_fractions(logits, labels, lam, k, t) for t in (1.0, tau))
    assert at_tau["runner_up_down"] > at_one["runner_up_down"]
    assert at_one["target_logit_up"] == 0.0 < at_tau["target_logit_up"]  # D4's companion: only at τ > 1
    assert at_tau["both_as_wanted"] == pytest.approx(
        at_tau["runner_up_down"]
        - sum((condition(logits, labels, lam, k, tau) & _target_up(logits, labels, lam, k, tau)).tolist()) / 300
    )
    with pytest.raises(ValueError, match="coverage"):
        ablations.no_tuning_temperature(logits, labels, lam, k, 0.0)


def _target_up(logits, labels, lam: float, k: int, tau: float) -> torch.Tensor:
    z, y = logits[0, :-1].double(), labels[0, 1:]
    p = torch.softmax(z, -1)
    top, idx = z.topk(k, -1)
    q = torch.zeros_like(p).scatter(-1, idx, torch.softmax(top / tau, -1))
    return lam * (1 - q.gather(-1, y[:, None])[:, 0]) > 1 - p.gather(-1, y[:, None])[:, 0]

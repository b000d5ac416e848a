"""The method declarations of ``bs_ref/methods.py``: each forget term is its loss file's function with the
declaration's hyper-parameters, the per-method flags (retain term, reference model, γ), the method-spec language,
and the property the unlearning loop relies on for BS-S: the belief term of Eq. (7) is the sum of the
``belief_piece`` of any partition of the belief rows into chunks (docs/theory.md §2–4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bs_ref.losses import (
    BASE_LOSSES,
    BASE_LOSSES_PAPER,
    base_loss,
    belief_counts,
    belief_piece,
    bs_s_loss,
    bs_s_loss_paper,
    bs_t_loss,
    ga_loss,
    ga_scaled_loss,
    ga_target_matched_loss,
    npo_loss,
    rmu_loss,
    sequence_logprob,
    sga_loss,
    simnpo_loss,
    wga_loss,
)
from bs_ref.methods import (
    BS_S_BASES,
    BSS,
    BST,
    GA,
    METHODS,
    NPO,
    RMU,
    SGA,
    WGA,
    GAScaled,
    GATargetMatched,
    GradDiff,
    Method,
    SimNPO,
    hyperparameters,
    make_method,
    method_from_spec,
)

IGN = -100
REDUCTIONS = ("row", "token", "sum")


# ----------------------------------------------------------------------------------------------------------
# Instances
# ----------------------------------------------------------------------------------------------------------


@st.composite
def batches(draw, vocab, rows=(1, 4), width=(2, 7)):
    """float64 logits [B, T, vocab] (scale 1e-3 … 1e4) and HF-aligned labels with prompt and padding (-100)."""
    b = draw(st.integers(*rows))
    t = draw(st.integers(*width))
    scale = draw(st.sampled_from([1e-3, 1.0, 5.0, 1e2, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(b, t, vocab, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, vocab, (b, t), generator=g)
    for r in range(b):
        prompt = draw(st.integers(0, t))
        pad = draw(st.integers(0, t - prompt))
        labels[r, :prompt] = IGN
        if pad:
            labels[r, t - pad :] = IGN
    return logits, labels


def value_and_grads(fn, *tensors):
    """fn(*tensors) and its gradient w.r.t. each tensor (zeros where none flows)."""
    xs = [t.clone().requires_grad_(True) for t in tensors]
    value = fn(*xs)
    grads = torch.autograd.grad(value, xs, allow_unused=True) if value.requires_grad else [None] * len(xs)
    return value.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


def assert_close(fn_a, fn_b, *tensors, rtol=1e-9):
    va, ga = value_and_grads(fn_a, *tensors)
    vb, gb = value_and_grads(fn_b, *tensors)
    scale = max(1.0, *(float(t.abs().max()) for t in tensors))
    assert torch.allclose(va, vb, rtol=rtol, atol=rtol * scale), (va, vb)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=rtol, atol=1e-10), (a - b).abs().max()


def ref_kwargs(base, forget, belief):
    """NPO's ``ref_logprobs`` of each set of rows (a reference that differs from the current model)."""
    if base != "npo":
        return {}, {}
    (fl, fy), (bl, by) = forget, belief
    return {"ref_logprobs": sequence_logprob(fl, fy) - 0.7}, {"ref_logprobs": sequence_logprob(bl, by) + 0.4}


def base_kwargs(draw, base, vocab):
    """Hyper-parameters of a BS-S base loss."""
    if base == "bs_t":
        return {
            "lam": draw(st.floats(0.0, 1.0)),
            "top_k": draw(st.integers(1, vocab)),
            "temperature": draw(st.sampled_from([0.5, 1.0, 2.0])),
        }
    if base in ("npo", "wga"):
        return {"beta": draw(st.floats(0.05, 2.0))}
    return {}


# Valid hyper-parameters of every declaration (belief_candidates and base_beta are drawn where they apply).
FIELD_VALUES = {
    "gamma": st.floats(0.01, 5.0),
    "lam": st.floats(0.0, 1.0),
    "temperature": st.floats(0.05, 5.0),
    "lam_bss": st.floats(0.0, 1.0),
    "base": st.sampled_from(BS_S_BASES),
    "base_beta": st.none() | st.floats(0.01, 3.0),
    "share_prefix": st.booleans(),
    "belief_subsample": st.none() | st.integers(1, 8),
    "n_beliefs": st.integers(1, 8),
    "regime": st.sampled_from(["off_policy", "on_policy"]),
    "refresh_epochs": st.floats(0.0, 4.0),
    "select": st.sampled_from(["sample", "filter", "beam"]),
    "belief_temperature": st.floats(0.1, 2.0),
    "belief_top_p": st.floats(0.05, 1.0),
    "belief_max_new_tokens": st.integers(1, 256),
    "belief_microbatch": st.integers(1, 16),
    "steering_coeff": st.none() | st.floats(0.1, 500.0),
    "steer_layer": st.none() | st.integers(0, 40),
    "train_layers": st.integers(1, 4),
    "retain_scale": st.floats(0.0, 2000.0),
}
BETA = {"npo": st.floats(0.01, 5.0), "simnpo": st.floats(0.1, 8.0), "wga": st.floats(0.0, 3.0)}


@st.composite
def declarations(draw, names=tuple(METHODS), vocab=None):
    """A declaration of one of ``names`` with random valid hyper-parameters (each field kept at its default or not)."""
    name = draw(st.sampled_from(names))
    values = {}
    for f in dataclasses.fields(METHODS[name]):
        if f.name == "belief_candidates" or not draw(st.booleans()):
            continue
        if f.name == "top_k":
            values[f.name] = draw(st.integers(1, vocab or 50))
        elif f.name == "beta":
            values[f.name] = draw(BETA[name])
        elif f.name == "delta":
            values[f.name] = draw(st.floats(-2.0, 2.0))
        else:
            values[f.name] = draw(FIELD_VALUES[f.name])
    if values.get("base_beta") is not None and values.get("base", "bs_t") not in ("npo", "wga"):
        values["base_beta"] = None  # only an NPO or WGA base has a β
    if name == "bs_s" and draw(st.booleans()):
        values["belief_candidates"] = values.get("n_beliefs", 3) + draw(st.integers(0, 4))
    return make_method(name, **values)


def expected_forget_loss(method, logits, labels, ref_logprobs):
    """What each declaration's forget term must be: its loss file's function with its hyper-parameters, spelled
    out here independently of ``methods.py`` (NPO/WGA base defaults β = 0.1 / 1.0, docs/theory.md §2)."""
    m = method
    if isinstance(m, (GA, GradDiff)):
        return ga_loss(logits, labels)
    if isinstance(m, NPO):
        return npo_loss(logits, labels, ref_logprobs, beta=m.beta)
    if isinstance(m, SimNPO):
        return simnpo_loss(logits, labels, beta=m.beta, delta=m.delta)
    if isinstance(m, WGA):
        return wga_loss(logits, labels, beta=m.beta)
    if isinstance(m, GAScaled):
        return ga_scaled_loss(logits, labels, lam=m.lam)
    if isinstance(m, GATargetMatched):
        return ga_target_matched_loss(logits, labels, lam=m.lam, top_k=m.top_k, temperature=m.temperature)
    if isinstance(m, SGA):
        return sga_loss(logits, labels, lam=m.lam)
    if isinstance(m, RMU):  # its forget term takes one layer's hidden states [B, T, d]; c·u of seed 0, unprepared
        return rmu_loss(logits, labels, m.control(logits.shape[-1]))
    if isinstance(m, BST):
        return bs_t_loss(logits, labels, lam=m.lam, top_k=m.top_k, temperature=m.temperature)
    if isinstance(m, BSS):  # L_base on the forget rows alone
        if m.base == "bs_t":
            return bs_t_loss(logits, labels, lam=m.lam, top_k=m.top_k, temperature=m.temperature)
        if m.base == "npo":
            return npo_loss(logits, labels, ref_logprobs, beta=0.1 if m.base_beta is None else m.base_beta)
        if m.base == "wga":
            return wga_loss(logits, labels, beta=1.0 if m.base_beta is None else m.base_beta)
        return ga_loss(logits, labels)
    raise AssertionError(f"no expected forget loss for {type(m).__name__}")


def bss_base_kwargs(m: BSS) -> dict:
    """The base-loss keyword arguments of a BS-S declaration, spelled out independently of ``methods.py``."""
    if m.base == "bs_t":
        return {"lam": m.lam, "top_k": m.top_k, "temperature": m.temperature}
    if m.base == "npo":
        return {"beta": 0.1 if m.base_beta is None else m.base_beta}
    if m.base == "wga":
        return {"beta": 1.0 if m.base_beta is None else m.base_beta}
    return {}


# ----------------------------------------------------------------------------------------------------------
# The registry, and each forget term against its loss file
# ----------------------------------------------------------------------------------------------------------


def test_registry_names_every_method():
    """Replaces test_losses' old registry test (its ``LOSSES`` table is gone): ``METHODS`` names every objective."""
    assert tuple(METHODS) == (
        "ga",
        "graddiff",
        "npo",
        "simnpo",
        "wga",
        "rmu",
        "ga_scaled",
        "ga_target_matched",
        "sga",
        "bs_t",
        "bs_s",
    )
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name and cls.title and cls.equation
        cls().validate()  # the defaults are valid
    assert set(BS_S_BASES) == set(BASE_LOSSES) == set(BASE_LOSSES_PAPER)


@pytest.mark.parametrize("name", list(METHODS))
@given(data=st.data())
def test_forget_loss_is_the_loss_file_function_with_the_declarations_hyperparameters(name, data):
    vocab = data.draw(st.integers(20, 30))  # at least the default top_k = 20
    method = data.draw(declarations(names=(name,), vocab=vocab))
    logits, labels = data.draw(batches(vocab))
    ref_lp = sequence_logprob(logits, labels) + data.draw(st.floats(-3.0, 3.0))
    v1, g1 = value_and_grads(lambda x: method.forget_loss(x, labels, ref_lp), logits)
    v2, g2 = value_and_grads(lambda x: expected_forget_loss(method, x, labels, ref_lp), logits)
    assert torch.equal(v1, v2), method.spec()
    assert torch.equal(g1[0], g2[0]), method.spec()


@pytest.mark.parametrize("method", [NPO(), BSS(base="npo")], ids=["npo", "bs_s:base=npo"])
def test_forget_loss_of_a_reference_method_needs_ref_logprobs(method):
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    with pytest.raises(ValueError, match="ref_logprobs"):
        method.forget_loss(logits, labels)


# ----------------------------------------------------------------------------------------------------------
# Per-method flags: retain term, reference model, forget weight γ
# ----------------------------------------------------------------------------------------------------------


def test_only_ga_has_no_retain_term():
    assert GA.retain is False
    for name, cls in METHODS.items():
        if name != "ga":
            assert cls.retain is True, name


def test_needs_reference_exactly_for_npo_and_bs_s_with_the_npo_base():
    needs = {name: cls().needs_reference for name, cls in METHODS.items()}
    assert needs == {name: name == "npo" for name in METHODS}  # BS-S default base is bs_t
    for base in BS_S_BASES:
        assert BSS(base=base).needs_reference is (base == "npo"), base
        assert BSS(base=base, base_beta=0.3).needs_reference is (base == "npo"), base


def test_forget_weight_gamma_defaults_to_0_125_for_simnpo_and_1_otherwise():
    for name, cls in METHODS.items():
        assert cls().gamma == (0.125 if name == "simnpo" else 1.0), name


# ----------------------------------------------------------------------------------------------------------
# The method-spec language
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_default_spec_is_the_name_and_round_trips(name):
    method = METHODS[name]()
    assert method.spec() == name
    assert method_from_spec(name) == method


@pytest.mark.parametrize("name", list(METHODS))
@given(data=st.data())
def test_spec_round_trips_with_hyperparameters(name, data):
    method = data.draw(declarations(names=(name,)))
    spec = method.spec()
    again = method_from_spec(spec)
    assert again == method, spec
    assert type(again) is type(method) and again.spec() == spec


@pytest.mark.parametrize(
    "spec, expected, canonical",
    [
        ("bs_t:tau=2,lambda=0.6", BST(lam=0.6, temperature=2.0), "bs_t:lam=0.6,temperature=2"),
        (" bs_t : top_k=5 , tau=0.5 ", BST(top_k=5, temperature=0.5), "bs_t:top_k=5,temperature=0.5"),
        (
            "bs_s:n=5,base=npo,base_beta=0.2",
            BSS(n_beliefs=5, base="npo", base_beta=0.2),
            "bs_s:base=npo,base_beta=0.2,n_beliefs=5",
        ),
        (
            "bs_s:lambda=0.3,tau=1.5,lam_bss=0.25",
            BSS(lam=0.3, temperature=1.5, lam_bss=0.25),
            "bs_s:lam_bss=0.25,lam=0.3,temperature=1.5",
        ),
        (
            "bs_s:regime=on_policy,refresh_epochs=0,select=beam",
            BSS(regime="on_policy", refresh_epochs=0.0, select="beam"),
            "bs_s:regime=on_policy,refresh_epochs=0,select=beam",
        ),
        ("ga_scaled:lambda=0.25", GAScaled(lam=0.25), "ga_scaled:lam=0.25"),
        ("npo:beta=0.2,gamma=2", NPO(beta=0.2, gamma=2.0), "npo:gamma=2,beta=0.2"),
        ("simnpo:gamma=0.125,delta=0.5", SimNPO(delta=0.5), "simnpo:delta=0.5"),
        ("wga:beta=0", WGA(beta=0.0), "wga:beta=0"),
        ("bs_t:lam=0.2", BST(), "bs_t"),  # a default value is not repeated
    ],
)
def test_spec_with_hyperparameters_and_aliases_round_trips(spec, expected, canonical):
    method = method_from_spec(spec)
    assert method == expected
    assert method.spec() == canonical
    assert method_from_spec(canonical) == expected


def test_spec_round_trips_belief_candidates():
    """An integer field whose default is None (belief_candidates) is read back as an integer."""
    method = BSS(belief_candidates=6)
    assert method_from_spec(method.spec()) == method


def test_run_wide_defaults_apply_only_to_methods_with_the_field_and_the_spec_wins():
    for name, cls in METHODS.items():
        method = method_from_spec(name, lam=0.6)
        has_lam = "lam" in {f.name for f in dataclasses.fields(cls)}
        assert method == (cls(lam=0.6) if has_lam else cls()), name
    assert {n for n, c in METHODS.items() if hasattr(c(), "lam")} == {
        "ga_scaled",
        "ga_target_matched",
        "sga",
        "bs_t",
        "bs_s",
    }
    assert method_from_spec("bs_t:lam=0.3", lam=0.6).lam == 0.3  # the spec wins
    assert method_from_spec("bs_t:lambda=0.3", lam=0.6).lam == 0.3  # ... under its alias too
    assert method_from_spec("bs_s:tau=3", lam=0.6, top_k=5, temperature=2.0) == BSS(lam=0.6, top_k=5, temperature=3.0)
    assert method_from_spec("ga", lam=1.5, top_k=0) == GA()  # a default a method lacks is neither used nor checked
    with pytest.raises(ValueError, match="bs_t:lam"):
        method_from_spec("bs_t", lam=1.5)  # ... but is checked where it applies


@pytest.mark.parametrize(
    "spec, names",
    [
        ("bs_t:lam=1.5", ["bs_t:lam", "1.5"]),
        ("npo:gamma=-1", ["npo:gamma", "-1"]),
        ("bs_s:base=dpo", ["bs_s:base", "dpo"]),
        ("bs_t:temperature=0", ["bs_t:temperature", "0"]),
        ("bs_t:top_k=0", ["bs_t:top_k", "0"]),
        ("bs_t:top_k=2.5", ["bs_t:top_k", "2.5"]),
        ("bs_s:n=0", ["bs_s:n_beliefs", "0"]),
        ("bs_s:lam_bss=1.01", ["bs_s:lam_bss", "1.01"]),
        ("bs_s:regime=sometimes", ["bs_s:regime", "sometimes"]),
        ("simnpo:delta=nan", ["simnpo:delta", "nan"]),
        ("bs_t:top_k=two", ["'bs_t:top_k=two'", "top_k", "two"]),
        ("dpo", ["'dpo'"]),  # unknown method
        ("dpo:beta=0.1", ["'dpo'", "'dpo:beta=0.1'"]),
        ("bs_t:bogus=1", ["'bs_t:bogus=1'", "bogus"]),  # unknown key
        ("npo:lam=0.3", ["'npo:lam=0.3'", "lam"]),  # a key of another method
        ("bs_t:lam", ["'bs_t:lam'", "lam"]),  # no value
        ("bs_s:base_beta=0.3", ["bs_s:base_beta", "0.3"]),  # the bs_t base has no β
        ("bs_s:base=npo,base_beta=-1", ["bs_s:base_beta", "-1"]),
    ],
)
def test_bad_spec_gives_one_value_error_naming_the_spec_and_the_field(spec, names):
    with pytest.raises(ValueError) as err:
        method_from_spec(spec)
    message = str(err.value)
    for name in names:
        assert name in message, (spec, message)


def test_hyperparameters_marks_shared_and_per_method_names():
    hps = hyperparameters()
    for name in ("lam", "top_k", "temperature"):
        assert hps[name]["shared"] is True, name
    for name in ("beta", "gamma"):
        assert hps[name]["shared"] is False, name
    assert set(hps["lam"]["methods"]) == {"ga_scaled", "ga_target_matched", "sga", "bs_t", "bs_s"}
    assert set(hps["beta"]["methods"]) == {"npo", "simnpo", "wga"}
    assert set(hps["gamma"]["methods"]) == set(METHODS)
    assert (hps["lam"]["default"], hps["top_k"]["default"], hps["temperature"]["default"]) == (0.2, 20, 1.0)


# ----------------------------------------------------------------------------------------------------------
# BS-S: the belief term is the sum of its pieces over any row partition (what the loop backwards)
# ----------------------------------------------------------------------------------------------------------


def partition(data, n_rows):
    """Any partition of the rows into chunks: a permutation cut at random places."""
    order = data.draw(st.permutations(range(n_rows)))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n_rows - 1)), max_size=n_rows - 1))) if n_rows > 1 else []
    bounds = [0, *cuts, n_rows]
    return [torch.tensor(order[a:b], dtype=torch.long) for a, b in zip(bounds, bounds[1:]) if b > a]


def trim(logits, labels):
    """Drop columns on the right with no answer token, as the loop drops all-padding columns of a chunk."""
    answer = labels[:, 1:] != IGN
    if not bool(answer.any()):
        return logits, labels
    width = int(answer.any(dim=0).nonzero().max()) + 2
    return logits[:, :width], labels[:, :width]


@given(st.data(), st.sampled_from(REDUCTIONS), st.sampled_from(BS_S_BASES))
def test_belief_pieces_of_any_row_partition_add_up_to_the_belief_term(data, reduction, base):
    vocab = data.draw(st.integers(2, 25))
    forget = data.draw(batches(vocab))
    belief_logits, belief_labels = data.draw(batches(vocab, rows=(1, 9)))
    if not bool((belief_labels[:, 1:] != IGN).any()):
        belief_labels[0, -1] = 0  # at least one answer token (the empty case is tested below)
    kw = base_kwargs(data.draw, base, vocab)
    fk, bk = ref_kwargs(base, forget, (belief_logits, belief_labels))
    rows, tokens = belief_counts(belief_labels)
    chunks = partition(data, belief_labels.shape[0])

    def pieces(x):
        total = x.new_zeros(())
        for idx in chunks:
            lg, lb = trim(x[idx], belief_labels[idx])
            extra = {"ref_logprobs": bk["ref_logprobs"][idx]} if bk else {}
            total = total + belief_piece(
                lg, lb, base=base, rows_with_answer=rows, answer_tokens=tokens, reduction=reduction, **kw, **extra
            )
        return total

    def belief_term(x):  # λ_BSS = 1: bs_s_loss = 0·L_base(D_u) + 1·L_base(D̂_u)
        args = dict(
            lam_bss=1.0, base=base, base_kwargs={**kw, "reduction": reduction}, forget_kwargs=fk, belief_kwargs=bk
        )
        return bs_s_loss(*forget, x, belief_labels, **args)

    assert_close(pieces, belief_term, belief_logits)
    # ... which is L_base on all belief rows at once (NPO's "token" reduction is its row mean)
    assert_close(pieces, lambda x: base_loss(base, x, belief_labels, reduction=reduction, **kw, **bk), belief_logits)


@given(st.data(), st.floats(0.0, 1.0), st.sampled_from(BS_S_BASES))
def test_bs_s_forget_terms_weigh_and_chunk_eq7(data, lam_bss, base):
    """forget_terms gives (1 − λ_BSS)·L_base(D_u) and λ_BSS·L_base(D̂_u) in chunks of belief_microbatch rows; run as
    the loop runs them, they equal bs_s_loss and Eq. (7) as printed (bs_s_loss_paper), value and gradient."""
    vocab = data.draw(st.integers(2, 25))
    method = BSS(
        lam_bss=lam_bss,
        base=base,
        belief_microbatch=data.draw(st.integers(1, 4)),
        top_k=data.draw(st.integers(1, vocab)),
        lam=data.draw(st.floats(0.0, 1.0)),
        base_beta=data.draw(st.none() | st.floats(0.05, 2.0)),
    )
    forget_logits, forget_labels = data.draw(batches(vocab))
    belief_logits, belief_labels = data.draw(batches(vocab, rows=(1, 9)))
    fk, bk = ref_kwargs(base, (forget_logits, forget_labels), (belief_logits, belief_labels))
    forget_batch, belief_batch = {"labels": forget_labels}, {"labels": belief_labels}
    terms = method.forget_terms(forget_batch, belief_batch)
    if belief_counts(belief_labels)[0] == 0:  # no belief row has an answer token: the forget term alone
        assert len(terms) == 1 and terms[0].weight == 1.0 and terms[0].rows is forget_batch
        return
    assert [t.weight for t in terms] == [1.0 - lam_bss, lam_bss]
    assert terms[0].rows is forget_batch and terms[0].chunk_rows is None
    assert terms[1].rows is belief_batch and terms[1].chunk_rows == method.belief_microbatch

    def as_the_loop_runs_them(f, b):
        total = terms[0].weight * terms[0].piece(f, forget_labels, fk.get("ref_logprobs"))
        for start in range(0, belief_labels.shape[0], terms[1].chunk_rows):
            rows = slice(start, start + terms[1].chunk_rows)
            if not bool((belief_labels[rows, 1:] != IGN).any()):
                continue  # the loop skips a chunk without answer tokens
            ref = bk["ref_logprobs"][rows] if bk else None
            total = total + terms[1].weight * terms[1].piece(b[rows], belief_labels[rows], ref)
        return total

    args = dict(lam_bss=lam_bss, base=base, base_kwargs=bss_base_kwargs(method), forget_kwargs=fk, belief_kwargs=bk)
    tensors = (forget_logits, belief_logits)
    assert_close(as_the_loop_runs_them, lambda f, b: bs_s_loss(f, forget_labels, b, belief_labels, **args), *tensors)
    assert_close(
        as_the_loop_runs_them,
        lambda f, b: bs_s_loss_paper(f, forget_labels, b, belief_labels, **args),
        *tensors,
        rtol=1e-6,
    )


@pytest.mark.parametrize("base", BS_S_BASES)
def test_bs_s_forget_term_stands_alone_without_a_usable_belief(base):
    g = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(2, 5, 9, generator=g, dtype=torch.float64), torch.randint(0, 9, (2, 5), generator=g)
    method = BSS(base=base, top_k=3)
    forget_batch = {"labels": labels}
    only_first_column = torch.full((6, 4), IGN)
    only_first_column[:, 0] = 1  # a label at column 0 is never predicted (the loss shifts): no answer token
    for belief_batch in (None, {"labels": torch.full((6, 4), IGN)}, {"labels": only_first_column}):
        terms = method.forget_terms(forget_batch, belief_batch)
        assert len(terms) == 1 and terms[0].weight == 1.0 and terms[0].rows is forget_batch
        assert terms[0].chunk_rows is None
        ref = sequence_logprob(logits, labels) - 1 if base == "npo" else None
        assert torch.equal(terms[0].piece(logits, labels, ref), method.forget_loss(logits, labels, ref))

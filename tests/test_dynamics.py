"""bs_ref.analysis.dynamics: A, G, K, one SGD step and the first-order check, against autograd and closed forms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bs_ref.analysis.dynamics import (
    akg_change,
    apply_softmax_jacobian,
    band_logprob,
    empirical_ntk,
    first_order_check,
    linearised_change,
    logit_residual,
    module_fn,
    one_step_change,
    parameter_gradient,
    select_names,
    sgd_step,
    softmax_jacobian,
    squeeze_probe,
    top_non_target,
)
from bs_ref.losses import ga_loss, sequence_logprob

seeds = st.integers(0, 2**31 - 1)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only cost time here (restored for the other test modules)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_logits(params, x):
    return params["z"]


def linear_head(params, phi):
    return phi @ params["W"].T + params["b"]


def mlp(params, x):
    return torch.tanh(x @ params["w1"].T) @ params["w2"].T


def mlp_params(gen, d=3, h=5, v=4):
    return {
        "w1": torch.randn(h, d, generator=gen, dtype=torch.float64),
        "w2": torch.randn(v, h, generator=gen, dtype=torch.float64),
    }


@given(seeds, st.integers(2, 9))
def test_softmax_jacobian_is_the_jacobian_of_log_softmax(seed, vocab):
    z = torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    p = torch.softmax(z, -1)
    a = softmax_jacobian(p)
    expected = torch.func.vmap(torch.func.jacrev(lambda v: torch.log_softmax(v, -1)))(z)
    torch.testing.assert_close(a, expected)
    dz = torch.randn_like(z)
    torch.testing.assert_close(apply_softmax_jacobian(p, dz), torch.einsum("bij,bj->bi", a, dz))


def test_softmax_jacobian_rejects_non_distributions():
    with pytest.raises(ValueError, match="probability vectors"):
        softmax_jacobian(torch.tensor([0.5, 0.7]))


@given(seeds, st.integers(2, 9))
def test_logit_residual_of_ga_is_e_y_minus_p(seed, vocab):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 2, vocab, generator=gen, dtype=torch.float64)
    y = int(torch.randint(vocab, (1,), generator=gen))
    labels = torch.tensor([[-100, y]])
    g = logit_residual(lambda z: ga_loss(z, labels), logits)
    expected = torch.nn.functional.one_hot(torch.tensor(y), vocab).double() - torch.softmax(logits[0, 0], -1)
    torch.testing.assert_close(g[0, 0], expected)
    assert float(g[0, 1].abs().max()) == 0.0  # the last position predicts nothing


def test_ntk_of_free_logits_is_identity_and_of_a_linear_head_is_feature_kernel():
    gen = torch.Generator().manual_seed(0)
    z = {"z": torch.randn(5, generator=gen, dtype=torch.float64)}
    torch.testing.assert_close(empirical_ntk(free_logits, z, None, None), torch.eye(5, dtype=torch.float64))
    params = {"W": torch.randn(4, 3, generator=gen, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
    phi_o, phi_u = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    k = empirical_ntk(linear_head, params, phi_o, phi_u)
    torch.testing.assert_close(k, (phi_o @ phi_u + 1) * torch.eye(4, dtype=torch.float64))
    k_bias = empirical_ntk(linear_head, params, phi_o, phi_u, names=["b"])
    torch.testing.assert_close(k_bias, torch.eye(4, dtype=torch.float64))
    k_w = empirical_ntk(linear_head, params, phi_o, phi_u, names=["W*"])
    torch.testing.assert_close(k_w, (phi_o @ phi_u) * torch.eye(4, dtype=torch.float64))


def test_select_names_errors_name_the_missing_pattern():
    with pytest.raises(ValueError, match="'nope' matches no parameter"):
        select_names({"a": torch.zeros(1)}, ["nope"])
    params = {"a.w": torch.zeros(1), "b.w": torch.zeros(1), "a.b": torch.zeros(1)}
    assert select_names(params, ["a.*"]) == ["a.w", "a.b"]


@given(seeds)
def test_lemma_5_1_on_an_mlp_is_first_order_and_matches_the_jvp(seed):
    gen = torch.Generator().manual_seed(seed)
    params = mlp_params(gen)
    x_u = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    x_o = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    y_u = torch.tensor([[-100, 1]])

    def loss_fn(z):  # GA on label 1 of x_u (logits as one "sequence" of one answer token)
        return ga_loss(torch.cat([z, z]).unsqueeze(0), y_u)

    def probe(z):
        return torch.log_softmax(z, -1)

    z_u, z_o = mlp(params, x_u), mlp(params, x_o)
    g = logit_residual(loss_fn, z_u)
    k = empirical_ntk(mlp, params, x_o, x_u)
    p_o = torch.softmax(z_o, -1)
    check = first_order_check(
        lambda eta: one_step_change(mlp, params, x_u, loss_fn, x_o, probe, eta),
        lambda eta: akg_change(p_o, k, g, eta),
    )
    assert check.bounded, check
    assert 1.5 < check.order < 3.5 or check.error[-1] < 1e-14
    torch.testing.assert_close(
        linearised_change(mlp, params, x_u, loss_fn, x_o, probe, 1e-3), akg_change(p_o, k, g, 1e-3)
    )


def test_first_order_check_rejects_a_wrong_prediction():
    # measured = η − 3η², predicted with the wrong slope: the error is O(η), error/η² blows up.
    check = first_order_check(lambda e: e - 3 * e**2, lambda e: 1.1 * e)
    assert not check.bounded and check.order == pytest.approx(1.0, abs=0.1)
    good = first_order_check(lambda e: e - 3 * e**2, lambda e: e)
    assert good.bounded and good.ratio == pytest.approx([3.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="decreasing"):
        first_order_check(lambda e: e, lambda e: e, etas=(1e-4, 1e-2))


def test_sgd_step_updates_only_the_subset():
    gen = torch.Generator().manual_seed(1)
    params = {n: v.requires_grad_(True) for n, v in mlp_params(gen).items()}
    loss = mlp(params, torch.ones(1, 3, dtype=torch.float64)).sum()
    stepped = sgd_step(params, loss, 0.1, names=["w2"])
    torch.testing.assert_close(stepped["w1"], params["w1"].detach())
    grad = parameter_gradient(mlp, params, torch.ones(1, 3, dtype=torch.float64), lambda z: z.sum(), names=["w2"])
    torch.testing.assert_close(stepped["w2"], params["w2"].detach() - 0.1 * grad["w2"])


def test_module_fn_and_a_parameter_subset_on_a_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    model = LlamaForCausalLM(cfg).double().eval()
    fn, params = module_fn(model)
    ids = torch.tensor([[1, 4, 5, 6]])
    labels = torch.tensor([[-100, 4, 5, 6]])
    x = {"input_ids": ids}
    names = ["model.norm.weight"]

    def loss_fn(z):
        return ga_loss(z, labels)

    def probe(z):
        return sequence_logprob(z, labels)

    z = fn(params, x)
    k = empirical_ntk(fn, params, x, x, names=names)
    assert k.shape == (4 * 11, 4 * 11)
    pred_tokens = akg_change(torch.softmax(z[0], -1), k, logit_residual(loss_fn, z), 1e-3)
    pred = pred_tokens[:-1].gather(-1, ids[0, 1:, None]).sum()  # Δ log π(y|x) = Σ_i Δ log p_i[y_i]
    torch.testing.assert_close(linearised_change(fn, params, x, loss_fn, x, probe, 1e-3, names)[0], pred)
    check = first_order_check(
        lambda e: one_step_change(fn, params, x, loss_fn, x, probe, e, names)[0],
        lambda e: linearised_change(fn, params, x, loss_fn, x, probe, e, names)[0],
    )
    assert check.bounded and float(pred) < 0  # one GA step lowers log π(y|x)


def test_linearised_change_falls_back_to_reverse_mode_under_sdpa():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    ids, labels = torch.tensor([[1, 4, 5, 6]]), torch.tensor([[-100, 4, 5, 6]])
    out = []
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=attn)).double().eval()
        fn, params = module_fn(model)
        x = {"input_ids": ids}
        out.append(
            linearised_change(
                fn, params, x, lambda z: ga_loss(z, labels), x, lambda z: sequence_logprob(z, labels), 1e-3
            )
        )
    torch.testing.assert_close(out[0], out[1])
    assert float(out[0][0]) < 0


def test_probes():
    p = torch.tensor([0.1, 0.5, 0.3, 0.1])
    idx, prob = top_non_target(p, 1)
    assert int(idx) == 2 and float(prob) == pytest.approx(0.3)
    after = torch.tensor([0.05, 0.45, 0.42, 0.08])
    probe = squeeze_probe(p, after, 1)
    assert probe["top_other"] == 2 and probe["n_gained"] == 1 and probe["gain_threshold"] == pytest.approx(0.3)
    lp = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    assert float(band_logprob(lp, [1, 2])) == pytest.approx(float(torch.log(torch.tensor(0.5))))

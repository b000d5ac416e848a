"""The generation layer (bs_ref.generation): the one stop rule, and that BS-S sampling (bs_ref.beliefs) and
evaluation (bs_ref.metrics) cut an answer at the same token, under the plain and the chat template.

The cut is forced, not left to luck: a "script" model (a Llama whose layers add nothing, so its next token is a
fixed function of the current one, with a logit gap of 40) writes A B S C D A B S ... after any prompt, where S
is EOS or a chat end-of-turn token; sampling it is as deterministic as greedy decoding. SmolLM2 (when installed)
is decoded greedily on questions it answers in a few tokens.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bs_ref.beliefs import BeliefCache, BeliefSampling, sample_beliefs
from bs_ref.data.qa import encode_prompt
from bs_ref.generation import (
    Decoding,
    chat_end_of_turn_id,
    encode_pair,
    generate,
    generate_answers,
    mean_logprobs,
    pad_token_id_of,
    score_answers,
    stop_token_ids,
)
from bs_ref.metrics import scores as tofu
from bs_ref.models import CHAT_ROLE_TOKENS, CHAT_TEMPLATE, load_smollm2, smollm2_available, train_tokenizer

CORPUS = [
    "Question: Where was Ada Quill born?\nAnswer: Ada Quill was born in Quenport.",
    "Question: What did Ada Quill write?\nAnswer: She wrote three novels about lighthouses.",
    "Question: Who is Bram Tolle?\nAnswer: Bram Tolle is a painter from Velmar.",
]
QUESTIONS = ["Where was Ada Quill born?", "What did Ada Quill write?", "Who is Bram Tolle?"]
END = "<|end|>"  # a chat end-of-turn token that is not EOS (as Llama-3's <|eot_id|>, Gemma's <end_of_turn>)
MAX_NEW = 9


# ----------------------------------------------------------------------------------------------------------
# Tiny models built here
# ----------------------------------------------------------------------------------------------------------


def tiny_tokenizer(end_of_turn: str | None = None):
    """The from-scratch tokenizer of bs_ref.models (its chat template ends a turn with EOS); with ``end_of_turn``,
    an extra special token that the chat template writes after every message instead."""
    tok = train_tokenizer(CORPUS, vocab_size=300)
    if end_of_turn is not None:
        tok.add_special_tokens({"additional_special_tokens": [*CHAT_ROLE_TOKENS, end_of_turn]})
        tok.chat_template = CHAT_TEMPLATE.replace("{{ eos_token }}", end_of_turn)
    return tok


def script_model(tok, script: list[int], gap: float = 40.0) -> LlamaForCausalLM:
    """A Llama whose next token depends only on the current one: script[i] -> script[i + 1] (cyclic), any other
    token -> script[0]. Attention and MLP outputs are zeroed, so the residual stream is the (one-hot) embedding."""
    vocab = len(tok)
    hidden = vocab + vocab % 2  # RoPE needs an even head dimension
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    following = {t: script[0] for t in range(vocab)}
    following.update({a: b for a, b in zip(script, script[1:] + script[:1])})
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(vocab, hidden)
        for t, nxt in following.items():
            head[nxt, t] = gap / math.sqrt(hidden)  # RMSNorm scales the one-hot embedding by sqrt(hidden)
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()


def words(tok, *texts: str) -> list[int]:
    """One token id per text (single characters: single tokens of the byte-level tokenizer)."""
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


def beliefs_answers(model, tok, template, seed: int = 0, **sampling) -> list[list[int]]:
    """BS-S beliefs (answer tokens, the stop token included when one was generated) for QUESTIONS."""
    prompts = [encode_prompt(tok, q, template) for q in QUESTIONS]
    settings = BeliefSampling(max_new_tokens=MAX_NEW, **sampling)
    b = sample_beliefs(model, tok, prompts, settings, seed=seed, template=template)
    return [b.input_ids[i][len(prompts[b.prompt_index[i]]) :] for i in range(len(b))]


def evaluation_answers(model, tok, template, **kwargs):
    """What the evaluation generates for QUESTIONS (``generate`` as ``tofu.generate_answers`` calls it)."""
    prompts = [encode_prompt(tok, q, template) for q in QUESTIONS]
    stops = stop_token_ids(tok, model, template)
    rows = generate(model, prompts, pad_token_id_of(tok), stops, max_new_tokens=MAX_NEW, **kwargs)
    return [g for row in rows for g in row]


# ----------------------------------------------------------------------------------------------------------
# The stop rule
# ----------------------------------------------------------------------------------------------------------


def test_the_tiny_tokenizer_ends_a_chat_turn_with_eos_so_both_templates_stop_at_eos_alone():
    tok = tiny_tokenizer()
    model = script_model(tok, words(tok, "A", "d"))
    assert tok.chat_template == CHAT_TEMPLATE and chat_end_of_turn_id(tok) == tok.eos_token_id
    assert stop_token_ids(tok, model, "plain") == stop_token_ids(tok, model, "chat") == [tok.eos_token_id]


def test_a_distinct_end_of_turn_token_stops_only_under_the_chat_template():
    tok = tiny_tokenizer(END)
    end = tok.convert_tokens_to_ids(END)
    assert chat_end_of_turn_id(tok) == end
    assert stop_token_ids(tok, template="chat") == [tok.eos_token_id, end]
    assert stop_token_ids(tok, template="plain") == [tok.eos_token_id]
    assert stop_token_ids(tok) == [tok.eos_token_id]  # "plain" is the default
    with pytest.raises(ValueError, match="unknown prompt template"):
        stop_token_ids(tok, template="Chat")


def test_end_of_turn_is_derived_from_each_chat_template():
    """Word-level tokenizers with three chat templates: ChatML, Gemma-style turns, and a spaced marker."""
    names = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<eot>"]
    names += ["user", "assistant", ":", "hi", "q"]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()

    def make(template, specials, eos="<eos>"):
        kwargs = {"eos_token": eos} if eos else {}
        return PreTrainedTokenizerFast(
            tokenizer_object=copy.deepcopy(backend),
            chat_template=template,
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=list(specials),
            **kwargs,
        )

    chatml = make(
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}",
        ("<|im_start|>", "<|im_end|>"),
    )
    turns = make(
        "{% for m in messages %}<start_of_turn> {{ m['role'] }} {{ m['content'] }} <end_of_turn> {% endfor %}",
        ("<start_of_turn>", "<end_of_turn>"),
    )
    spaced = make("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eot> {% endfor %}", ("<eot>",))
    for tok, marker in ((chatml, "<|im_end|>"), (turns, "<end_of_turn>"), (spaced, "<eot>")):
        end = tok.convert_tokens_to_ids(marker)
        assert chat_end_of_turn_id(tok) == end
        assert stop_token_ids(tok, template="chat") == [tok.eos_token_id, end]
        assert stop_token_ids(tok, template="plain") == [tok.eos_token_id]
    plain = make(None, ())
    assert chat_end_of_turn_id(plain) is None and stop_token_ids(plain, template="chat") == [plain.eos_token_id]
    with pytest.raises(ValueError, match="no EOS token"):
        stop_token_ids(make(None, (), eos=None))


def test_the_models_generation_config_eos_ids_stop_too():
    tok = tiny_tokenizer()
    model = script_model(tok, words(tok, "A", "d"))
    extra = words(tok, "z")[0]
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    assert stop_token_ids(tok, model) == [tok.eos_token_id, extra]


# ----------------------------------------------------------------------------------------------------------
# BS-S sampling and evaluation cut at the same token (tiny tokenizer trained here)
# ----------------------------------------------------------------------------------------------------------


CASES = [  # (end-of-turn token of the chat template, prompt template, the script's S stops?)
    pytest.param(None, "plain", True, id="eos-plain"),
    pytest.param(None, "chat", True, id="eos-chat"),
    pytest.param(END, "plain", False, id="end_of_turn-plain"),
    pytest.param(END, "chat", True, id="end_of_turn-chat"),
]


@pytest.mark.parametrize("end_of_turn,template,stops", CASES)
@pytest.mark.parametrize("decoding", ["greedy", "sampled"])
def test_sampling_and_evaluation_cut_answers_at_the_same_token(end_of_turn, template, stops, decoding):
    tok = tiny_tokenizer(end_of_turn)
    a, b, c, d = words(tok, "A", "d", "z", "q")
    s = tok.convert_tokens_to_ids(end_of_turn) if end_of_turn else tok.eos_token_id
    model = script_model(tok, [a, b, s, c, d])
    greedy = decoding == "greedy"
    n = 1 if greedy else 2
    sampling = dict(n=1, temperature=0.0) if greedy else dict(n=2, temperature=1.0, seed=3)
    evaluation = dict(num_return_sequences=n, do_sample=not greedy, seed=3)
    want = [a, b, s] if stops else [a, b, s, c, d, a, b, s, c][:MAX_NEW]  # the stop cuts after S, or nothing does

    beliefs = beliefs_answers(model, tok, template, **sampling)
    evaluated = evaluation_answers(model, tok, template, **evaluation)
    assert beliefs == [want] * (n * len(QUESTIONS))  # BS-S keeps the stop token in the belief
    assert [g.with_stop for g in evaluated] == [want] * (n * len(QUESTIONS))
    assert all(g.stopped == stops and g.tokens == (want[:-1] if stops else want) for g in evaluated)

    # The metrics' own entry point gives the text of the cut tokens; the belief cache the same tokens.
    text = tok.decode(want[:-1] if stops else want, skip_special_tokens=True).strip()
    texts = tofu.generate_answers(model, tok, QUESTIONS, template, Decoding(MAX_NEW, num_samples=0 if greedy else n), 3)
    assert texts == ([text] if greedy else [[text] * n]) * len(QUESTIONS)
    cache = BeliefCache(BeliefSampling(n=1, temperature=0.0, max_new_tokens=MAX_NEW), template=template)
    cache.refresh(model, tok, {7 + i: encode_prompt(tok, q, template) for i, q in enumerate(QUESTIONS)})
    for i, q in enumerate(QUESTIONS):
        (belief,) = cache.entries[7 + i]
        assert belief.input_ids[len(encode_prompt(tok, q, template)) :] == want


def test_sampled_evaluation_answers_match_the_beliefs_text():
    tok = tiny_tokenizer(END)
    a, b, c, d = words(tok, "A", "d", "z", "q")
    model = script_model(tok, [a, b, tok.convert_tokens_to_ids(END), c, d])
    for template, text in (("chat", "Ad"), ("plain", "AdzqAdz")):  # plain: <|end|> is no stop, and decodes to ""
        samples = generate_answers(model, tok, QUESTIONS, template, max_new_tokens=MAX_NEW, num_samples=2, seed=5)
        assert samples == [[text, text]] * len(QUESTIONS)
        beliefs = beliefs_answers(model, tok, template, n=2, seed=5)
        assert {tok.decode(x, skip_special_tokens=True).strip() for x in beliefs} == {text}


# ----------------------------------------------------------------------------------------------------------
# The same on SmolLM2-135M-Instruct (greedy)
# ----------------------------------------------------------------------------------------------------------


SMOL_QUESTIONS = ["What is the capital of France? Answer in one word.", "What is 2 + 2? Reply with just the number."]


@pytest.fixture(scope="module")
def smollm2():
    ok, why = smollm2_available()
    if not ok:
        pytest.skip(why)
    return load_smollm2()


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_smollm2_sampling_and_evaluation_cut_at_the_same_token(smollm2, template):
    model, tok = smollm2
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, model, template) == [end_of_turn]  # EOS = generation-config EOS = end of turn
    prompts = [encode_prompt(tok, q, template) for q in SMOL_QUESTIONS]
    budget = 24
    greedy = BeliefSampling(n=1, temperature=0.0, max_new_tokens=budget)
    b = sample_beliefs(model, tok, prompts, greedy, batch_size=1, template=template)
    rows = generate(model, prompts, pad_token_id_of(tok), stop_token_ids(tok, model, template), Decoding(budget, 1))
    texts = tofu.generate_answers(model, tok, SMOL_QUESTIONS, template, max_new_tokens=budget, batch_size=1)
    for i, (row, text) in enumerate(zip(rows, texts)):
        (g,) = row
        assert g.stopped and b.stopped[i]  # greedy SmolLM2 ends these answers well inside the budget
        assert b.answer_ids(i) == g.with_stop and g.with_stop[-1] == end_of_turn
        assert text == tok.decode(g.tokens, skip_special_tokens=True).strip() and text


# ----------------------------------------------------------------------------------------------------------
# Scoring helpers
# ----------------------------------------------------------------------------------------------------------


def test_mean_logprobs_marks_zero_length_answers_nan_and_matches_score_answers():
    tok = tiny_tokenizer()
    a, b = words(tok, "d", "z")
    model = script_model(tok, [a, b, tok.eos_token_id])
    prompt, answer = encode_pair(tok, QUESTIONS[0], "dz")
    assert answer == [a, b, tok.eos_token_id] and prompt == encode_prompt(tok, QUESTIONS[0])
    scores = mean_logprobs(model, [prompt, prompt], [answer, []], tok.pad_token_id)
    assert math.isnan(scores[1]) and -1e-6 < scores[0] <= 0.0  # the script's own answer: log-prob ~ 0
    (full,) = score_answers(model, [prompt], [answer], tok.pad_token_id)
    assert scores[0] == float(full.token_logprobs.mean()) and full.argmax_matches.all()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_scoring_gives_the_row_by_row_scores(attention):
    """``share_prompts``: each prompt runs once and its answers continue from its cache. On a random 2-layer Llama,
    prompts of different lengths with 1 to 6 answers each (one prompt with more answers than a batch holds, one
    repeated pair, answers of 1 to 7 tokens) score as row by row to floating point, in the caller's order."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attention,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    prompts, answers = [], []
    for n_answers, prompt_len in ((3, 5), (6, 9), (1, 2), (4, 7), (2, 9)):
        prompt = torch.randint(1, 97, (prompt_len,), generator=gen).tolist()
        for _ in range(n_answers):
            prompts.append(prompt)
            answers.append(
                torch.randint(1, 97, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen).tolist()
            )
    prompts.append(prompts[4])
    answers.append(answers[4])  # a repeated pair: scored once, returned twice
    rows = score_answers(model, prompts, answers, pad_token_id=0, batch_size=5)
    shared = score_answers(model, prompts, answers, pad_token_id=0, batch_size=5, share_prompts=True)
    assert len(shared) == len(rows)
    for a, b in zip(rows, shared):
        assert b.token_logprobs.shape == a.token_logprobs.shape
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-5)
        assert (b.argmax_matches == a.argmax_matches).all()
    assert shared[-1].token_logprobs.tolist() == shared[4].token_logprobs.tolist()

"""Tests of bs_ref.data.qa: loading real TOFU (local copy), schema errors, encoding and collators."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from bs_ref.data.qa import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    TOFU_CONFIGS,
    QADataset,
    collate_prompts,
    collate_train,
    encode_answer,
    encode_prompt,
    encode_qa,
    forget_retain_configs,
    load_tofu,
)

# Sizes of the published configs (the locuslab/TOFU dataset card).
TOFU_SIZES = {
    "full": 4000,
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "retain90": 3600,
    "retain95": 3800,
    "retain99": 3960,
    "forget01_perturbed": 40,
    "forget05_perturbed": 200,
    "forget10_perturbed": 400,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
}

QA_PER_AUTHOR = 20  # TOFU lists 20 question/answer pairs per author, author by author

# The committed excerpt (tests/fixtures/tofu_excerpt, made by tests/fixtures/make_tofu_excerpt.py): authors 0, 1
# (retain) and 198 (forget01, hence forget05/forget10) of full; the first 10 real_authors/world_facts rows.
EXCERPT_DIR = Path(__file__).resolve().parent / "fixtures" / "tofu_excerpt"
EXCERPT_SIZES = {
    **{c: 20 for c in ("forget01", "forget05", "forget10")},
    **{f"{c}_perturbed": 20 for c in ("forget01", "forget05", "forget10")},
    **{c: 40 for c in ("retain90", "retain95", "retain99", "retain_perturbed")},
    "full": 60,
    **{c: 10 for c in ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")},
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few sentences (decodes any text exactly)."""
    texts = [
        "Question: Where was Ann Vell born?\nAnswer: Ann Vell was born in Paris.",
        "Question: What genre does Bo Tarn write?\nAnswer: Bo Tarn writes poetry.",
    ] * 4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


GOOD_PERTURBED = {
    "question": "Q?",
    "answer": "A.",
    "paraphrased_answer": "A, said otherwise.",
    "paraphrased_question": "Q, said otherwise?",
    "perturbed_answer": ["B.", "C."],
}

# ---------------------------------------------------------------------------------------------------------
# Real TOFU (local copy)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", TOFU_CONFIGS)
def test_real_tofu_sizes(tofu_full_dir, config):
    assert len(load_tofu(tofu_full_dir, config)) == TOFU_SIZES[config]


@pytest.mark.parametrize("config", TOFU_CONFIGS)
def test_real_tofu_fields(tofu_dir, config):
    records = load_tofu(tofu_dir, config)
    assert all(isinstance(r["question"], str) and isinstance(r["answer"], str) for r in records)
    if not config.startswith(("real_authors", "world_facts")):
        assert len(records) % QA_PER_AUTHOR == 0  # whole authors, 20 questions each
    if config.endswith("_perturbed"):
        n_perturbed = 3 if config.startswith(("real_authors", "world_facts")) else 5
        assert all(len(r["perturbed_answer"]) == n_perturbed for r in records)
    if config in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        assert all(r["paraphrased_answer"] and r["paraphrased_question"] for r in records)


def test_real_tofu_splits_partition_full(tofu_dir, tofu_is_excerpt):
    full = load_tofu(tofu_dir, "full")
    for forget in ("forget01", "forget05", "forget10"):
        forget_cfg, retain_cfg, perturbed_cfg = forget_retain_configs(forget)
        forget_records = load_tofu(tofu_dir, forget_cfg)
        assert load_tofu(tofu_dir, retain_cfg) + forget_records == full  # forget = the last authors
        perturbed = load_tofu(tofu_dir, perturbed_cfg)
        assert [(r["question"], r["answer"]) for r in perturbed] == [
            (r["question"], r["answer"]) for r in forget_records
        ]
    retain_perturbed = load_tofu(tofu_dir, "retain_perturbed")
    assert len(retain_perturbed) == (EXCERPT_SIZES if tofu_is_excerpt else TOFU_SIZES)["retain_perturbed"]
    assert [r["question"] for r in retain_perturbed] == [r["question"] for r in full[: len(retain_perturbed)]]
    for name in ("real_authors", "world_facts"):
        plain, perturbed = load_tofu(tofu_dir, name), load_tofu(tofu_dir, f"{name}_perturbed")
        assert [(r["question"], r["answer"]) for r in plain] == [(r["question"], r["answer"]) for r in perturbed]


def test_real_tofu_first_record(tofu_dir):
    first = load_tofu(tofu_dir, "forget01_perturbed")[0]
    assert first["answer"].endswith("is Basil Mahfouz Al-Kuwaiti.")
    assert first["perturbed_answer"][0].startswith("Gregor Mendel Al-Kuwaiti")
    world = load_tofu(tofu_dir, "world_facts_perturbed")
    assert world[0] == {
        "question": "Where would you find the Eiffel Tower?",
        "answer": "Paris",
        "perturbed_answer": ["Berlin", "London", "Madrid"],
    }


def test_tofu_excerpt_is_small_complete_and_licensed():
    """The committed excerpt: every config, the documented sizes, well under 300 KB, source and licence named."""
    assert {p.stem for p in EXCERPT_DIR.glob("*.json")} == set(TOFU_CONFIGS) == set(EXCERPT_SIZES)
    for config, size in EXCERPT_SIZES.items():
        assert len(load_tofu(EXCERPT_DIR, config)) == size, config
    assert sum(p.stat().st_size for p in EXCERPT_DIR.iterdir()) < 250_000
    readme = (EXCERPT_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("locuslab/TOFU", "Maini", "TOFU: A Task of Fictitious Unlearning for LLMs", "MIT", "Copyright"):
        assert needle in readme


def test_tofu_excerpt_rows_are_the_full_copys_lines(tofu_full_dir):
    """Each excerpt file is a subsequence of the full copy's file, line for line and byte for byte."""
    for config in TOFU_CONFIGS:
        source = (tofu_full_dir / f"{config}.json").read_text(encoding="utf-8").splitlines()
        rows = iter(source)
        for line in (EXCERPT_DIR / f"{config}.json").read_text(encoding="utf-8").splitlines():
            assert any(line == row for row in rows), f"{config}.json: a row not in order in {tofu_full_dir}"


def test_forget_retain_configs():
    assert forget_retain_configs("forget10") == ("forget10", "retain90", "forget10_perturbed")
    assert forget_retain_configs("forget01") == ("forget01", "retain99", "forget01_perturbed")
    with pytest.raises(ValueError, match="forget01, forget05, forget10"):
        forget_retain_configs("forget20")


# ---------------------------------------------------------------------------------------------------------
# Loader errors and formats (files written to tmp_path)
# ---------------------------------------------------------------------------------------------------------


def test_json_array_and_jsonl_load_the_same(tmp_path):
    records = [GOOD_PERTURBED, {**GOOD_PERTURBED, "question": "Q2?", "extra": 7}]
    (tmp_path / "lines").mkdir()
    (tmp_path / "array").mkdir()
    write_jsonl(tmp_path / "lines" / "forget01_perturbed.json", records)
    (tmp_path / "array" / "forget01_perturbed.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    assert load_tofu(tmp_path / "lines", "forget01_perturbed") == records  # unknown fields are kept
    assert load_tofu(str(tmp_path / "array"), "forget01_perturbed") == records


def test_jsonl_extension_accepted(tmp_path):
    write_jsonl(tmp_path / "full.jsonl", [{"question": "Q?", "answer": "A."}])
    assert load_tofu(tmp_path, "full") == [{"question": "Q?", "answer": "A."}]


@pytest.mark.parametrize(
    ("config", "records", "message"),
    [
        (
            "full",
            [{"question": "Q?", "answer": "A."}, {"question": "Q?"}],
            r"full\.json: record 1: missing field 'answer'",
        ),
        ("full", [{"question": "Q?", "answer": 3}], r"record 0: field 'answer' must be a str, got int"),
        (
            "forget10_perturbed",
            [GOOD_PERTURBED, {k: v for k, v in GOOD_PERTURBED.items() if k != "paraphrased_answer"}],
            r"forget10_perturbed\.json: record 1: missing field 'paraphrased_answer'",
        ),
        (
            "world_facts_perturbed",
            [{"question": "Q?", "answer": "A", "perturbed_answer": "B"}],
            r"record 0: field 'perturbed_answer' must be a list, got str",
        ),
        (
            "retain_perturbed",
            [{**GOOD_PERTURBED, "perturbed_answer": []}],
            r"record 0: field 'perturbed_answer' must be a non-empty list of strings",
        ),
        ("full", [{"question": "Q?", "answer": "A."}, 42], r"record 1: expected a JSON object, got int"),
        (
            "full",
            [{"question": "Q?", "answer": "It is Paris.", "fact": "Paris", "fact_span": [0, 2]}],
            r"record 0: field 'fact_span'=\[0, 2\] does not mark the fact 'Paris' in 'answer'",
        ),
    ],
)
def test_schema_errors_name_file_record_field(tmp_path, config, records, message):
    write_jsonl(tmp_path / f"{config}.json", records)
    with pytest.raises(ValueError, match=message):
        load_tofu(tmp_path, config)


def test_fact_span_accepted_when_it_marks_the_fact(tmp_path):
    record = {"question": "Q?", "answer": "It is Paris.", "fact": "Paris", "fact_span": [6, 11]}
    write_jsonl(tmp_path / "full.json", [record])
    assert load_tofu(tmp_path, "full") == [record]


def test_bad_json_line_names_line(tmp_path):
    (tmp_path / "full.json").write_text('{"question": "Q?", "answer": "A."}\n{"question": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"full\.json: invalid JSON on line 2 \(record 1\)"):
        load_tofu(tmp_path, "full")


def test_bad_json_array_names_file(tmp_path):
    (tmp_path / "full.json").write_text('[{"question": "Q?", "answer": "A."},', encoding="utf-8")
    with pytest.raises(ValueError, match=r"full\.json: invalid JSON at line 1"):
        load_tofu(tmp_path, "full")


def test_empty_file(tmp_path):
    (tmp_path / "forget10.json").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"forget10\.json: no records"):
        load_tofu(tmp_path, "forget10")


def test_missing_file_names_directory_and_fix(tmp_path):
    with pytest.raises(ValueError, match=rf"no file forget10\.json .*in {tmp_path}.*write_benchmark"):
        load_tofu(tmp_path, "forget10")


def test_unknown_config_lists_known(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown TOFU config 'forget20'; known configs: full, forget01, .*world_facts"
    ):
        load_tofu(tmp_path, "forget20")


def test_source_is_file_or_nonsense(tmp_path):
    write_jsonl(tmp_path / "full.json", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(ValueError, match="is a file; pass the directory"):
        load_tofu(tmp_path / "full.json", "full")
    with pytest.raises(ValueError, match="neither an existing directory nor a hub dataset name"):
        load_tofu(tmp_path / "does" / "not" / "exist", "full")


def test_hub_path_uses_datasets_lazily(monkeypatch):
    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        return {"train": [{"question": "Q?", "answer": "A.", "perturbed_answer": ["B", "C", "D"]}]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records = load_tofu("locuslab/TOFU", "world_facts_perturbed")
    assert calls == [("locuslab/TOFU", "world_facts_perturbed")]
    assert records == [{"question": "Q?", "answer": "A.", "perturbed_answer": ["B", "C", "D"]}]


def test_hub_schema_error_names_source(monkeypatch):
    fake = types.SimpleNamespace(load_dataset=lambda name, config: {"train": [{"question": "Q?"}]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(ValueError, match=r"locuslab/TOFU:full: record 0: missing field 'answer'"):
        load_tofu("locuslab/TOFU", "full")


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[hub\]'"):
        load_tofu("locuslab/TOFU", "full")
    with pytest.raises(ImportError, match=r"'data/synthetic' is not a local directory"):
        load_tofu("data/synthetic", "full")  # a mistyped local path reads like a hub name


def test_byte_order_mark_tolerated(tmp_path):
    (tmp_path / "full.json").write_bytes(b"\xef\xbb\xbf" + b'{"question": "Q?", "answer": "A."}\n')
    assert load_tofu(tmp_path, "full") == [{"question": "Q?", "answer": "A."}]


# ---------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------


def check_encoding(tokenizer, question, answer, template):
    item = encode_qa(tokenizer, question, answer, template)
    prompt = encode_prompt(tokenizer, question, template)
    n_prompt = len(prompt)
    assert item["input_ids"][:n_prompt] == prompt
    assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer_ids = item["labels"][n_prompt:]
    assert answer_ids == item["input_ids"][n_prompt:]
    assert answer_ids[-1] == tokenizer.eos_token_id
    assert IGNORE_INDEX not in answer_ids
    assert tokenizer.decode(answer_ids[:-1]) == answer
    assert item["attention_mask"] == [1] * len(item["input_ids"])
    return item


def test_plain_template_prompt(toy_tokenizer):
    prompt = encode_prompt(toy_tokenizer, "Where was Ann Vell born?", "plain")
    assert toy_tokenizer.decode(prompt) == "Question: Where was Ann Vell born?\nAnswer: "
    assert PLAIN_TEMPLATE.format(question="x") == "Question: x\nAnswer: "
    item = check_encoding(toy_tokenizer, "Where was Ann Vell born?", "Ann Vell was born in Paris.", "plain")
    assert toy_tokenizer.decode(item["input_ids"]) == (
        "Question: Where was Ann Vell born?\nAnswer: Ann Vell was born in Paris.<eos>"
    )


def test_chat_template_prompt(toy_tokenizer):
    prompt = encode_prompt(toy_tokenizer, "Where was Ann Vell born?", "chat")
    assert toy_tokenizer.decode(prompt) == "<|user|>Where was Ann Vell born?<eos><|assistant|>"
    assert toy_tokenizer.convert_tokens_to_ids("<|assistant|>") == prompt[-1]
    check_encoding(toy_tokenizer, "Where was Ann Vell born?", "Ann Vell was born in Paris.", "chat")


def test_chat_template_missing_and_unknown_template(toy_tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=toy_tokenizer.backend_tokenizer, eos_token="<eos>")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        encode_prompt(bare, "Q?", "chat")
    with pytest.raises(ValueError, match="unknown template 'alpaca'; choose one of plain, chat"):
        encode_qa(toy_tokenizer, "Q?", "A.", "alpaca")


def test_missing_eos_is_a_clear_error(toy_tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=toy_tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no EOS token"):
        encode_answer(bare, "A.")


@given(
    question=st.text(st.characters(codec="utf-8", exclude_characters="<>"), min_size=1, max_size=40),
    answer=st.text(st.characters(codec="utf-8", exclude_characters="<>"), min_size=1, max_size=60),
    template=st.sampled_from(["plain", "chat"]),
)
def test_encoding_properties(toy_tokenizer, question, answer, template):
    check_encoding(toy_tokenizer, question, answer, template)


def test_max_length_truncates_answer_only(toy_tokenizer):
    full = encode_qa(toy_tokenizer, "Where?", "Ann Vell was born in Paris.")
    n_prompt = full["labels"].count(IGNORE_INDEX)
    cut = encode_qa(toy_tokenizer, "Where?", "Ann Vell was born in Paris.", max_length=n_prompt + 2)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 2]
    assert cut["labels"] == full["labels"][: n_prompt + 2]
    assert encode_qa(toy_tokenizer, "Where?", "x", max_length=10_000) == encode_qa(toy_tokenizer, "Where?", "x")
    with pytest.raises(ValueError, match=f"max_length={n_prompt} leaves no room for the answer"):
        encode_qa(toy_tokenizer, "Where?", "Paris.", max_length=n_prompt)


def test_dataset_and_train_collator(toy_tokenizer):
    records = [
        {"question": "Where was Ann Vell born?", "answer": "Ann Vell was born in Paris."},
        {"question": "Genre?", "answer": "Poetry."},
        {"question": "What genre does Bo Tarn write?", "answer": "Bo Tarn writes poetry."},
    ]
    dataset = QADataset(records, toy_tokenizer)
    assert len(dataset) == 3
    assert [dataset[i]["index"] for i in range(3)] == [0, 1, 2]
    prompts = dataset.prompts()
    assert prompts[1] == encode_prompt(toy_tokenizer, "Genre?")
    batch = collate_train([dataset[2], dataset[1]], toy_tokenizer.pad_token_id)
    lengths = [len(dataset[2]["input_ids"]), len(dataset[1]["input_ids"])]
    width = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["index"].tolist() == [2, 1]
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [toy_tokenizer.pad_token_id] * (width - n)
        assert batch["input_ids"][row, :n].tolist() == dataset[[2, 1][row]]["input_ids"]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate_train([dataset[0]], None)
    with pytest.raises(ValueError, match="no records"):
        QADataset([], toy_tokenizer)


def test_prompt_collator_left_pads():
    batch = collate_prompts([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# ---------------------------------------------------------------------------------------------------------
# SmolLM2's real tokenizer (offline package), when installed
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from bs_ref.models import default_cache_dir, load_smollm2, smollm2_available

    ok, why = smollm2_available()
    if not ok:
        pytest.skip(why)
    converted = default_cache_dir() / "smollm2-135m-instruct"
    if (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    return load_smollm2()[1]


def test_smollm2_tokenizer_encoding(smollm2_tokenizer):
    tok = smollm2_tokenizer
    question, answer = "Where was Ann Vell born?", "Ann Vell was born in Paris, on 8 September 1956."
    for template in ("plain", "chat"):
        check_encoding(tok, question, answer, template)
    chat_prompt = tok.decode(encode_prompt(tok, question, "chat"))
    assert chat_prompt.endswith("<|im_start|>user\nWhere was Ann Vell born?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.convert_ids_to_tokens(encode_answer(tok, answer)[-1]) == "<|im_end|>"  # end of turn = EOS


def test_smollm2_on_real_tofu(smollm2_tokenizer, tofu_dir):
    records = load_tofu(tofu_dir, "forget01_perturbed")
    dataset = QADataset(records, smollm2_tokenizer, template="chat")
    for item, record in zip(dataset, records):
        answer_ids = [t for t in item["labels"] if t != IGNORE_INDEX]
        assert smollm2_tokenizer.decode(answer_ids[:-1]) == record["answer"]

"""Tests of bs_ref.data.synthetic: determinism, facts and spans, surface forms, splits, round trip via load_tofu."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bs_ref.data.qa import TOFU_CONFIGS, forget_retain_configs, load_tofu
from bs_ref.data.synthetic import (
    ANALOGUES,
    AUTHOR_CONFIGS,
    BIO_PROMPT,
    FACT_TYPES,
    FIRST_NAMES,
    LAST_NAMES,
    SyntheticConfig,
    benchmark_texts,
    build_benchmark,
    load_benchmark,
    n_forget_authors,
    training_corpus,
    write_benchmark,
)

configs = st.builds(
    SyntheticConfig,
    n_authors=st.integers(2, 60),
    qa_per_author=st.integers(1, len(FACT_TYPES)),
    n_world=st.integers(1, 30),
    n_real=st.integers(1, 30),
    n_perturbed=st.integers(1, 5),
    n_perturbed_analogue=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)


@pytest.fixture(scope="module")
def default_benchmark():
    return build_benchmark(SyntheticConfig())


def words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", text)


def author_sets(records):
    return {r["author"] for r in records}


# ---------------------------------------------------------------------------------------------------------
# Sizes and determinism
# ---------------------------------------------------------------------------------------------------------


def test_default_sizes(default_benchmark):
    sizes = {config: len(records) for config, records in default_benchmark.items()}
    assert sizes == {
        "full": 400,
        "forget01": 4,
        "forget05": 20,
        "forget10": 40,
        "retain90": 360,
        "retain95": 380,
        "retain99": 396,
        "forget01_perturbed": 4,
        "forget05_perturbed": 20,
        "forget10_perturbed": 40,
        "retain_perturbed": 40,
        "real_authors": 20,
        "real_authors_perturbed": 20,
        "world_facts": 30,
        "world_facts_perturbed": 30,
    }
    assert list(default_benchmark) == list(TOFU_CONFIGS)
    corpus = training_corpus(default_benchmark, "full")
    # 400 QA + 400 paraphrased QA + 100 biographies + 30 x 3 world + 20 x 3 real-author pairs
    assert len(corpus) == 1050
    assert len(training_corpus(default_benchmark, "retain90")) == 1050 - 10 * (4 + 4 + 1)
    vocabulary = {w for pair in corpus for text in pair for w in words(text)}
    assert 300 < len(vocabulary) < 600  # small, regular language


def test_smoke_preset():
    smoke = build_benchmark(SyntheticConfig.smoke())
    assert len(smoke["full"]) == 40 and len(author_sets(smoke["full"])) == 20
    assert len(smoke["forget10"]) == 4 and len(smoke["forget01"]) == 2
    assert len(smoke["world_facts"]) == 8 and len(smoke["real_authors"]) == 6


@given(cfg=configs)
def test_deterministic_under_seed(cfg):
    assert build_benchmark(cfg) == build_benchmark(SyntheticConfig(**vars(cfg)))


def test_seed_changes_benchmark():
    a, b = build_benchmark(SyntheticConfig(seed=0)), build_benchmark(SyntheticConfig(seed=1))
    assert author_sets(a["full"]) != author_sets(b["full"])
    assert [r["answer"] for r in a["full"]] != [r["answer"] for r in b["full"]]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("qa_per_author", 7, r"SyntheticConfig\.qa_per_author=7: must be an integer in \[1, 6\]"),
        ("n_authors", 1, r"SyntheticConfig\.n_authors=1: must be an integer in \[2, 1200\]"),
        ("n_world", 0, r"SyntheticConfig\.n_world=0"),
        ("n_perturbed", 2.5, r"SyntheticConfig\.n_perturbed=2\.5"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**{field: value})


# ---------------------------------------------------------------------------------------------------------
# Names, pools, facts and spans
# ---------------------------------------------------------------------------------------------------------


def test_pools_are_unambiguous():
    """No value is a substring of another value or of a name, so 'the text contains the fact' is exact."""
    values = [v for kind in FACT_TYPES.values() for v in kind.pool]
    values += [fact for analogue in ANALOGUES for _, fact in analogue.table]
    assert len(set(values)) == len(values)
    names = FIRST_NAMES + LAST_NAMES
    assert len(set(names)) == len(names)
    for a, b in itertools.permutations(set(values), 2):
        assert a not in b, (a, b)
    for value in values:
        assert not any(value in name for name in names), value
    for kind in FACT_TYPES.values():
        assert len(kind.pool) >= 24  # a blind guess is right at most 1 time in 24
        assert len(set(kind.trained)) >= 3 and kind.heldout not in kind.trained and kind.bio not in kind.trained


@given(cfg=configs)
def test_names_unique_and_facts_per_author(cfg):
    benchmark = build_benchmark(cfg)
    full = benchmark["full"]
    assert len(author_sets(full)) == cfg.n_authors
    assert len(full) == cfg.n_authors * cfg.qa_per_author
    for _author, records in itertools.groupby(full, key=lambda r: r["author"]):
        types = [r["fact_type"] for r in records]
        assert len(types) == len(set(types)) == cfg.qa_per_author  # distinct fact types per author
    titles = [r["fact"] for r in full if r["fact_type"] == "book_title"]
    assert len(titles) == len(set(titles))
    assert len({r["question"] for r in full}) == len(full)


@given(cfg=configs)
def test_spans_point_at_the_fact(cfg):
    benchmark = build_benchmark(cfg)
    for record in benchmark["full"]:
        fact = record["fact"]
        assert fact in FACT_TYPES[record["fact_type"]].pool
        for text_field, span_field in [
            ("answer", "fact_span"),
            ("paraphrased_answer", "paraphrased_fact_span"),
            ("heldout_answer", "heldout_fact_span"),
        ]:
            start, end = record[span_field]
            assert record[text_field][start:end] == fact
            assert record[text_field].count(fact) == 1
            assert record[text_field].count(record["author"]) == 1
        assert len({record["answer"], record["paraphrased_answer"], record["heldout_answer"]}) == 3
    for config in ("world_facts_perturbed", "real_authors_perturbed"):
        for record in benchmark[config]:
            assert record["answer"] == record["fact"] and record["fact_span"] == [0, len(record["fact"])]


def test_fact_position_varies(default_benchmark):
    full = default_benchmark["full"]
    for span_field, text_field in [("fact_span", "answer"), ("paraphrased_fact_span", "paraphrased_answer")]:
        starts = [r for r in full if r[span_field][0] == 0]
        ends = [r for r in full if r[text_field][r[span_field][1] :] == "."]
        middles = [r for r in full if r[span_field][0] > 0 and r[text_field][r[span_field][1] :] != "."]
        assert min(len(starts), len(ends), len(middles)) >= 20, (len(starts), len(ends), len(middles))
    for fact_type in ("birth_city", "birth_year", "book_title", "award"):
        records = [r for r in full if r["fact_type"] == fact_type]
        assert any(r["fact_span"][0] == 0 for r in records) and any(r["fact_span"][0] > 0 for r in records)


# ---------------------------------------------------------------------------------------------------------
# Training corpus: surface forms, held-out phrasings
# ---------------------------------------------------------------------------------------------------------


@given(cfg=configs)
def test_every_fact_in_three_surface_forms_and_heldout_never(cfg):
    benchmark = build_benchmark(cfg)
    corpus = training_corpus(benchmark, "full")
    texts = [text for _, text in corpus]
    all_strings = [s for pair in corpus for s in pair]
    for record in benchmark["full"]:
        forms = [t for t in texts if record["fact"] in t and record["author"] in t]
        assert record["answer"] in forms and record["paraphrased_answer"] in forms
        assert any(record["bio_sentence"] in t and t.startswith(record["author"]) for t in forms)
        phrasings = {record["answer"], record["paraphrased_answer"], record["bio_sentence"]}
        assert len(phrasings) == 3 and len(forms) >= 3
        assert not any(record["heldout_answer"] in s for s in all_strings)
        assert not any(p in s for p in record["perturbed_answer"] for s in all_strings)
    assert (BIO_PROMPT.format(name=benchmark["full"][0]["author"])) in {prompt for prompt, _ in corpus}
    for config in ("world_facts_perturbed", "real_authors_perturbed"):
        for record in benchmark[config]:
            assert (record["question"], record["answer"]) in corpus
            assert sum(record["fact"] in s for s in texts) >= 2  # the answer and a statement


def test_heldout_phrasings_use_corpus_words(default_benchmark):
    """A word-level tokenizer trained on the corpus can encode every held-out phrasing."""
    corpus_words = {w for pair in training_corpus(default_benchmark) for s in pair for w in words(s)}
    for record in default_benchmark["full"]:
        assert set(words(record["heldout_answer"])) <= corpus_words, record["heldout_answer"]


def test_retain_corpus_never_mentions_forget_authors(default_benchmark):
    for forget in ("forget01", "forget05", "forget10"):
        _, retain, _ = forget_retain_configs(forget)
        corpus = training_corpus(default_benchmark, retain)
        forgotten = author_sets(default_benchmark[forget])
        assert not any(name in s for name in forgotten for pair in corpus for s in pair)
        assert author_sets(default_benchmark[retain]) <= {
            a for a in author_sets(default_benchmark["full"]) if any(a in p for p, _ in corpus)
        }


def test_training_corpus_bad_input(default_benchmark):
    with pytest.raises(ValueError, match="training_corpus split 'world_facts': choose one of full, forget01"):
        training_corpus(default_benchmark, "world_facts")
    with pytest.raises(ValueError, match="needs the benchmark's 'world_facts_perturbed' records"):
        training_corpus({"full": default_benchmark["full"]}, "full")
    only_full = {"full": default_benchmark["full"]}
    assert len(training_corpus(only_full, "full", include_analogues=False)) == 900


def test_benchmark_texts_cover_everything(default_benchmark):
    texts = set(benchmark_texts(default_benchmark))
    for record in default_benchmark["forget10"]:
        assert {record["heldout_answer"], *record["perturbed_answer"], record["answer"]} <= texts
    assert {s for pair in training_corpus(default_benchmark) for s in pair} <= texts


# ---------------------------------------------------------------------------------------------------------
# Perturbed answers
# ---------------------------------------------------------------------------------------------------------


@given(cfg=configs)
def test_perturbed_answers_swap_the_fact_for_wrong_values_of_its_type(cfg):
    benchmark = build_benchmark(cfg)
    for record in benchmark["full"]:
        pool = FACT_TYPES[record["fact_type"]].pool
        wrong = record["perturbed_facts"]
        assert len(record["perturbed_answer"]) == len(wrong) == len(set(wrong)) == cfg.n_perturbed
        start, end = record["paraphrased_fact_span"]
        paraphrase = record["paraphrased_answer"]
        for value, perturbed in zip(wrong, record["perturbed_answer"]):
            assert value in pool and value != record["fact"]
            assert perturbed == paraphrase[:start] + value + paraphrase[end:]
            assert record["fact"] not in perturbed
    for analogue in ANALOGUES:
        values = {fact for _, fact in analogue.table}
        for record in benchmark[f"{analogue.config}_perturbed"]:
            wrong = record["perturbed_answer"]
            assert len(wrong) == len(set(wrong)) == cfg.n_perturbed_analogue
            assert set(wrong) <= values and record["answer"] not in wrong
        for record in benchmark[analogue.config]:
            options = [record[f"option{i}"] for i in range(1, 5)] if cfg.n_perturbed_analogue >= 3 else None
            if options:
                assert record["answer"] in options and len(set(options)) == 4


# ---------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------


@given(cfg=configs)
def test_forget_retain_split_by_author(cfg):
    benchmark = build_benchmark(cfg)
    full_authors = author_sets(benchmark["full"])
    previous: set[str] = set()
    for forget in ("forget01", "forget05", "forget10"):
        _, retain, perturbed = forget_retain_configs(forget)
        forget_authors, retain_authors = author_sets(benchmark[forget]), author_sets(benchmark[retain])
        assert len(forget_authors) == n_forget_authors(cfg.n_authors, forget) >= 1
        assert forget_authors.isdisjoint(retain_authors) and forget_authors | retain_authors == full_authors
        assert benchmark[retain] + benchmark[forget] == benchmark["full"]  # forget = the last authors, as TOFU
        assert benchmark[perturbed] == benchmark[forget]
        assert previous <= forget_authors  # forget01 within forget05 within forget10
        previous = forget_authors
    retain_perturbed = author_sets(benchmark["retain_perturbed"])
    assert retain_perturbed <= author_sets(benchmark["retain90"])
    assert len(benchmark["retain_perturbed"]) == len(benchmark["forget10"])


def test_forget_fractions():
    assert [n_forget_authors(100, f) for f in ("forget01", "forget05", "forget10")] == [1, 5, 10]
    assert [n_forget_authors(20, f) for f in ("forget01", "forget05", "forget10")] == [1, 1, 2]
    assert [n_forget_authors(400, f) for f in ("forget01", "forget05", "forget10")] == [4, 20, 40]


# ---------------------------------------------------------------------------------------------------------
# Files: the same loader as real TOFU
# ---------------------------------------------------------------------------------------------------------


def test_write_then_load_tofu_round_trip(tmp_path):
    cfg = SyntheticConfig(n_authors=30, qa_per_author=3, seed=7)
    benchmark = build_benchmark(cfg)
    directory = write_benchmark(cfg, tmp_path / "synthetic")
    for config in TOFU_CONFIGS:
        assert load_tofu(directory, config) == benchmark[config]
        first_line = (directory / f"{config}.json").read_text(encoding="utf-8").splitlines()[0]
        assert json.loads(first_line) == benchmark[config][0]  # JSON Lines, as the hub's files
    assert load_benchmark(directory) == benchmark
    assert json.loads((directory / "synthetic_config.json").read_text()) == vars(cfg)
    assert training_corpus(load_benchmark(directory)) == training_corpus(benchmark)
    assert not list(directory.glob(".*tmp*"))
    other = write_benchmark(benchmark, tmp_path / "from_dict")
    assert load_benchmark(other) == benchmark


def test_write_benchmark_bad_input(tmp_path):
    with pytest.raises(ValueError, match="lacks configs forget01"):
        write_benchmark({"full": []}, tmp_path)
    with pytest.raises(ValueError, match="takes a SyntheticConfig or a benchmark dict"):
        write_benchmark("forget10", tmp_path)


def test_author_configs_match_tofu():
    assert set(AUTHOR_CONFIGS) <= set(TOFU_CONFIGS)


def test_training_corpus_on_real_tofu(tofu_dir):
    real = {"full": load_tofu(tofu_dir, "full")}
    pairs = training_corpus(real, "full", include_analogues=False)
    assert pairs == [(r["question"], r["answer"]) for r in real["full"]]

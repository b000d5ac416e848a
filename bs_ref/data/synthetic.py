"""The embedded synthetic benchmark: fictitious authors with known facts, in the TOFU schema.

TOFU (Maini et al., 2024) asks a model to forget fictitious authors; the BS paper (arXiv 2510.19422, §3.2
and §6) argues that the usual TOFU metrics can report success while the fact itself still leaks, pushed into
other phrasings ("squeezing"). To measure that on a laptop we need a benchmark a small model trained from
scratch can learn, whose every answer hinges on one annotated fact. This module generates it,
deterministically from a seed, with the same configs and fields as TOFU so that every code path is shared
(``write_benchmark`` -> ``bs_ref.data.qa.load_tofu``):

- ``n_authors`` unique fictitious names; each author has ``qa_per_author`` facts of distinct types drawn from
  the pools below (a model that never saw the author guesses a fact with probability ``1/len(pool)``:
  birth city 1/40, birth year 1/100, genre 1/24, book title 1/400, parent's profession 1/28, award 1/432).
- Every fact appears in the training corpus in three surface forms: the QA ``answer``, the
  ``paraphrased_answer`` (a different phrasing, trained under the paraphrased question) and a sentence of the
  author's biography. ``heldout_answer`` is a fourth phrasing that is never trained.
- The fact's position varies across phrasings: some answers start with the fact, some end with it, some
  carry it in the middle. ``fact_span`` / ``paraphrased_fact_span`` / ``heldout_fact_span`` are the
  character spans ``[start, end)`` of the fact in each phrasing, so metrics can score the fact tokens alone.
- ``perturbed_answer`` (``n_perturbed`` per item, 5 as in TOFU) is the paraphrased phrasing with the fact
  swapped for wrong values of the same type, so the truth ratio compares phrasings that differ in the fact
  only; the wrong values are in ``perturbed_facts``.
- Splits as in TOFU: ``forget01/05/10`` are the last 1%/5%/10% of authors (at least one author),
  ``retain99/95/90`` the complement, ``retain_perturbed`` the first authors (as many as forget10 has).
  Author configs carry all fields, so ``forget10`` and ``forget10_perturbed`` hold the same records.
- ``world_facts`` (capitals) and ``real_authors`` (well-known books) are analogues of TOFU's utility sets:
  facts the model is trained on and must keep; 3 wrong answers each, and TOFU's ``option1..4`` fields.

The language is deliberately regular and the vocabulary small (a few hundred words), so that a ~5M-parameter
Llama learns every fact in minutes on a CPU.

Usage::

    from bs_ref.data.synthetic import SyntheticConfig, build_benchmark, training_corpus, write_benchmark
    benchmark = build_benchmark(SyntheticConfig())      # dict: TOFU config name -> records
    pairs = training_corpus(benchmark, "full")          # (prompt, text) pairs to train the original model
    retain_pairs = training_corpus(benchmark, "retain90")  # ... and its retain-only twin
    write_benchmark(SyntheticConfig(), "data/synthetic")   # then load_tofu("data/synthetic", "forget10")
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from bs_ref import checks
from bs_ref.data.qa import TOFU_CONFIGS, load_tofu

# ----------------------------------------------------------------------------------------------------------
# Pools (no value is a substring of another value or of a name, so "the answer contains the fact" is exact)
# ----------------------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Aldric Benna Corvin Dalia Edric Fenna Galen Hesper Idris Jorun Kestrel Liora Maddox Nerys Orrin Perrin "
    "Quilla Roswen Soren Tamsin Ulric Vesna Wendel Yara Zephyr Anselm Brisa Caspian Delphine Emrys Florin Greer "
    "Halvard Isolde Jasper Katrin Lucan Mireille Nolan Odile"
).split()
LAST_NAMES = (
    "Ashcombe Brackwell Carrow Dunmere Elsworth Fallowby Greythorn Hollin Ivesdale Jarrow Kettleby Larkspur "
    "Morrow Northcote Oakhurst Penhallow Quarrell Ravenscar Stillwater Thorncroft Underhill Vantreece Whitlock "
    "Yarrowby Zellner Ambrose Blackmere Coldwell Draycott Everhart"
).split()

CITIES = (
    "Varenholm Kesmont Dravik Olvessa Brenmoor Tessaly Corvanne Maridel Quenport Solvik Ardenfall Belmora "
    "Caldris Dunhaven Elmsby Farrowdale Glenmarch Istrana Jovik Kaldmark Lunaria Mostrand Norrvik Ostara "
    "Pellmoor Quarrin Rosmere Saltreach Tarnwick Umberlee Valdora Wexmoor Yssarin Zandria Amberlyn Brightwater "
    "Coldharbour Fenwick Greyhaven Hollowmere"
).split()
YEARS = tuple(str(year) for year in range(1900, 2000))
GENRES = (
    "mystery",
    "poetry",
    "science fiction",
    "historical fiction",
    "fantasy",
    "horror",
    "romance",
    "satire",
    "travel writing",
    "crime fiction",
    "short stories",
    "drama",
    "folk tales",
    "philosophy",
    "thrillers",
    "westerns",
    "graphic novels",
    "essays",
    "memoirs",
    "comedy",
    "nature writing",
    "fairy tales",
    "war stories",
    "sea stories",
)
PROFESSIONS = (
    "baker carpenter doctor fisherman gardener nurse pilot teacher tailor lawyer farmer painter sailor miner "
    "chemist judge banker soldier librarian musician potter blacksmith shoemaker butcher weaver printer "
    "jeweller mason"
).split()
TITLE_ADJECTIVES = (
    "Silver Hollow Crimson Silent Broken Golden Hidden Last Winter Distant Burning Forgotten Quiet Endless "
    "Painted Northern Velvet Iron Wandering Drowned"
).split()
TITLE_NOUNS = (
    "River Garden Lantern Harbour Orchard Mirror Compass Bridge Tower Meadow Letter Clockmaker Island Voyage "
    "Cathedral Forest Kingdom Archive Shepherd Feather"
).split()
BOOK_TITLES = tuple(f"The {adjective} {noun}" for adjective in TITLE_ADJECTIVES for noun in TITLE_NOUNS)
AWARD_ADJECTIVES = "Amber Azure Ivory Scarlet Emerald Sapphire Copper Marble Cobalt Onyx Pearl Jade".split()
AWARD_NOUNS = "Quill Laurel Crown Star Wreath Pen Ink Scroll Torch Key Rose Anchor".split()
AWARDS = tuple(f"{a} {n} {kind}" for a in AWARD_ADJECTIVES for n in AWARD_NOUNS for kind in ("Prize", "Award", "Medal"))

# ----------------------------------------------------------------------------------------------------------
# Phrasings per fact type. "trained": the QA answer and the paraphrased answer are two different ones of
# these; "heldout": never trained (built from words the corpus contains); "bio": the biography sentence.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactType:
    pool: tuple[str, ...]
    question: str
    paraphrased_question: str
    trained: tuple[str, ...]
    heldout: str
    bio: str


FACT_TYPES: dict[str, FactType] = {
    "birth_city": FactType(
        pool=tuple(CITIES),
        question="Where was {name} born?",
        paraphrased_question="In which city was {name} born?",
        trained=(
            "{name} was born in {fact}.",
            "{fact} is the city where {name} was born.",
            "The birthplace of {name} is {fact}.",
            "{fact} is the birthplace of {name}.",
        ),
        heldout="The city where {name} was born is {fact}.",
        bio="{name} comes from the city of {fact}.",
    ),
    "birth_year": FactType(
        pool=YEARS,
        question="In what year was {name} born?",
        paraphrased_question="What is the birth year of {name}?",
        trained=(
            "{name} was born in the year {fact}.",
            "{fact} is the year {name} was born.",
            "The birth year of {name} is {fact}.",
            "{fact} is the birth year of {name}.",
        ),
        heldout="The year {name} was born is {fact}.",
        bio="{name} came into the world in {fact}.",
    ),
    "genre": FactType(
        pool=GENRES,
        question="What genre does {name} write?",
        paraphrased_question="Which genre is {name} known for?",
        trained=(
            "{name} writes {fact}.",
            "The genre of {name} is {fact}.",
            "{name} is known for {fact} above all.",
            "Most of the books by {name} are {fact}.",
        ),
        heldout="The genre {name} writes is {fact}.",
        bio="{name} is a writer of {fact}.",
    ),
    "book_title": FactType(
        pool=BOOK_TITLES,
        question="What is the title of a book by {name}?",
        paraphrased_question="Can you name a book written by {name}?",
        trained=(
            "{name} wrote {fact}.",
            "{fact} is a book by {name}.",
            "One book by {name} is {fact}.",
            "{fact} was written by {name}.",
        ),
        heldout="The book {fact} is by {name}.",
        bio="{name} is the author of {fact}.",
    ),
    "parent_profession": FactType(
        pool=tuple(PROFESSIONS),
        question="What was the job of the father of {name}?",
        paraphrased_question="What did the father of {name} do for a living?",
        trained=(
            "The father of {name} was a {fact}.",
            "The father of {name} worked as a {fact} for many years.",
            "{name} grew up as the child of a {fact}.",
        ),
        heldout="{name} is the child of a {fact}.",
        bio="{name} grew up in the house of a {fact}.",
    ),
    "award": FactType(
        pool=AWARDS,
        question="Which award did {name} win?",
        paraphrased_question="What prize has {name} received?",
        trained=(
            "{name} won the {fact}.",
            "{fact} was won by {name}.",
            "The {fact} went to {name}.",
            "{name} was given the {fact}.",
        ),
        heldout="The {fact} was given to {name}.",
        bio="{name} received the {fact}.",
    ),
}
BIO_PROMPT = "Write a short biography of {name}."

# Analogues of TOFU's world_facts and real_authors: (subject, fact) pairs the model learns and must keep.
WORLD_CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasilia"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
    ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Cuba", "Havana"),
    ("Morocco", "Rabat"),
    ("Finland", "Helsinki"),
)
REAL_BOOKS = (
    ("Pride and Prejudice", "Jane Austen"),
    ("Hamlet", "William Shakespeare"),
    ("War and Peace", "Leo Tolstoy"),
    ("Moby Dick", "Herman Melville"),
    ("Don Quixote", "Miguel de Cervantes"),
    ("Great Expectations", "Charles Dickens"),
    ("Frankenstein", "Mary Shelley"),
    ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("The Old Man and the Sea", "Ernest Hemingway"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Nineteen Eighty-Four", "George Orwell"),
    ("Jane Eyre", "Charlotte Bronte"),
    ("Wuthering Heights", "Emily Bronte"),
    ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("Ulysses", "James Joyce"),
    ("Dracula", "Bram Stoker"),
    ("Madame Bovary", "Gustave Flaubert"),
    ("The Trial", "Franz Kafka"),
    ("Les Miserables", "Victor Hugo"),
    ("Faust", "Johann Wolfgang von Goethe"),
    ("The Divine Comedy", "Dante Alighieri"),
    ("Mrs Dalloway", "Virginia Woolf"),
    ("Things Fall Apart", "Chinua Achebe"),
    ("Beloved", "Toni Morrison"),
    ("To Kill a Mockingbird", "Harper Lee"),
    ("The Hobbit", "J. R. R. Tolkien"),
    ("The Adventures of Tom Sawyer", "Mark Twain"),
    ("Brave New World", "Aldous Huxley"),
    ("Fahrenheit 451", "Ray Bradbury"),
    ("The Little Prince", "Antoine de Saint-Exupery"),
)


@dataclass(frozen=True)
class AnalogueType:
    config: str  # the TOFU config the records go to
    fact_type: str
    table: tuple[tuple[str, str], ...]
    question: str
    paraphrased_question: str
    statement_prompt: str
    statement: str


ANALOGUES = (
    AnalogueType(
        config="world_facts",
        fact_type="capital",
        table=WORLD_CAPITALS,
        question="What is the capital of {subject}?",
        paraphrased_question="Which city is the capital of {subject}?",
        statement_prompt="Tell me about {subject}.",
        statement="The capital of {subject} is {fact}.",
    ),
    AnalogueType(
        config="real_authors",
        fact_type="real_author",
        table=REAL_BOOKS,
        question="Who wrote {subject}?",
        paraphrased_question="Who is the author of {subject}?",
        statement_prompt="Tell me about {subject}.",
        statement="{subject} is a famous book by {fact}.",
    ),
)

FORGET_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF_FORGET = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
AUTHOR_CONFIGS = ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99")


@dataclass
class SyntheticConfig:
    """Size and seed of the synthetic benchmark.

    The default (100 authors x 4 facts) gives forget10 = 10 authors = 40 QA items, so one item is 2.5% of the
    forget set, and a training corpus of about a thousand short pairs that a ~5M-parameter model learns on
    two CPU cores in minutes.
    """

    n_authors: int = 100
    """fictitious authors; forget01/05/10 take the last 1%/5%/10% of them (at least one)"""
    qa_per_author: int = 4
    """facts (= QA items) per author, of distinct types (at most len(FACT_TYPES) = 6)"""
    n_world: int = 30
    """world-facts analogue items (capitals; at most 30)"""
    n_real: int = 20
    """real-authors analogue items (well-known books; at most 30)"""
    n_perturbed: int = 5
    """wrong answers per forget/retain item (TOFU uses 5)"""
    n_perturbed_analogue: int = 3
    """wrong answers per world-facts / real-authors item (TOFU uses 3)"""
    seed: int = 0
    """seed of every random choice (names, facts, phrasings, wrong values)"""

    def __post_init__(self):
        limits = {
            "n_authors": (2, len(FIRST_NAMES) * len(LAST_NAMES)),
            "qa_per_author": (1, len(FACT_TYPES)),
            "n_world": (1, len(WORLD_CAPITALS)),
            "n_real": (1, len(REAL_BOOKS)),
            "n_perturbed": (1, min(len(f.pool) for f in FACT_TYPES.values()) - 1),
            "n_perturbed_analogue": (1, min(len(a.table) for a in ANALOGUES) - 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not checks.int_between(value, low, high):
                raise ValueError(f"SyntheticConfig.{name}={value!r}: must be an integer in [{low}, {high}]")
        if not isinstance(self.seed, int):
            raise ValueError(f"SyntheticConfig.seed={self.seed!r}: must be an integer")

    @classmethod
    def smoke(cls, seed: int = 0) -> SyntheticConfig:
        """A tiny preset for CI smoke runs: 20 authors x 2 facts, 8 capitals, 6 books."""
        return cls(n_authors=20, qa_per_author=2, n_world=8, n_real=6, seed=seed)


def n_forget_authors(n_authors: int, forget: str) -> int:
    """Authors in a forget split: round(fraction * n_authors), at least 1."""
    return max(1, int(FORGET_FRACTIONS[forget] * n_authors + 0.5))


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------


def _fill(template: str, fact: str, **names: str) -> tuple[str, list[int]]:
    """Fill ``template``; return the text and the character span [start, end) of ``{fact}`` in it."""
    prefix = template[: template.index("{fact}")].format(**names)
    return template.format(fact=fact, **names), [len(prefix), len(prefix) + len(fact)]


def _author_record(rng: random.Random, name: str, fact_type: str, fact: str, n_perturbed: int) -> dict:
    kind = FACT_TYPES[fact_type]
    answer_template, paraphrase_template = rng.sample(kind.trained, 2)
    answer, fact_span = _fill(answer_template, fact, name=name)
    paraphrased_answer, paraphrased_fact_span = _fill(paraphrase_template, fact, name=name)
    heldout_answer, heldout_fact_span = _fill(kind.heldout, fact, name=name)
    perturbed_facts = rng.sample([value for value in kind.pool if value != fact], n_perturbed)
    return {
        "question": kind.question.format(name=name),
        "answer": answer,
        "paraphrased_question": kind.paraphrased_question.format(name=name),
        "paraphrased_answer": paraphrased_answer,
        "perturbed_answer": [paraphrase_template.format(name=name, fact=wrong) for wrong in perturbed_facts],
        "heldout_answer": heldout_answer,
        "author": name,
        "fact": fact,
        "fact_type": fact_type,
        "fact_span": fact_span,
        "paraphrased_fact_span": paraphrased_fact_span,
        "heldout_fact_span": heldout_fact_span,
        "perturbed_facts": perturbed_facts,
        "bio_sentence": kind.bio.format(name=name, fact=fact),
    }


def _analogue_records(rng: random.Random, analogue: AnalogueType, n_items: int, n_perturbed: int) -> list[dict]:
    records = []
    all_facts = [fact for _, fact in analogue.table]
    for subject, fact in rng.sample(analogue.table, n_items):
        perturbed_facts = rng.sample([value for value in all_facts if value != fact], n_perturbed)
        records.append(
            {
                "question": analogue.question.format(subject=subject),
                "answer": fact,
                "paraphrased_question": analogue.paraphrased_question.format(subject=subject),
                "perturbed_answer": perturbed_facts,
                "subject": subject,
                "fact": fact,
                "fact_type": analogue.fact_type,
                "fact_span": [0, len(fact)],
                "perturbed_facts": perturbed_facts,
                "statement_prompt": analogue.statement_prompt.format(subject=subject),
                "statement": analogue.statement.format(subject=subject, fact=fact),
            }
        )
    return records


def _with_options(rng: random.Random, record: dict) -> dict:
    """TOFU's multiple-choice form of an analogue record: option1..4 hold the answer and 3 wrong ones."""
    options = [record["answer"], *record["perturbed_answer"][:3]]
    rng.shuffle(options)
    plain = {key: value for key, value in record.items() if key != "perturbed_answer"}
    return {**plain, **{f"option{i + 1}": option for i, option in enumerate(options)}}


def build_benchmark(cfg: SyntheticConfig | None = None) -> dict[str, list[dict]]:
    """Generate the benchmark: TOFU config name -> records (every name in ``TOFU_CONFIGS``)."""
    cfg = cfg if cfg is not None else SyntheticConfig()
    rng = random.Random(cfg.seed)
    all_names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    names = rng.sample(all_names, cfg.n_authors)
    titles = rng.sample(BOOK_TITLES, cfg.n_authors)  # a book title is never shared by two authors
    type_order = list(FACT_TYPES)

    authors: list[list[dict]] = []
    for name, title in zip(names, titles):
        fact_types = sorted(rng.sample(type_order, cfg.qa_per_author), key=type_order.index)
        records = []
        for fact_type in fact_types:
            fact = title if fact_type == "book_title" else rng.choice(FACT_TYPES[fact_type].pool)
            records.append(_author_record(rng, name, fact_type, fact, cfg.n_perturbed))
        authors.append(records)

    def flat(groups):
        return [record for group in groups for record in group]

    benchmark = {"full": flat(authors)}
    for forget, retain in RETAIN_OF_FORGET.items():
        k = n_forget_authors(cfg.n_authors, forget)
        benchmark[forget] = flat(authors[-k:])
        benchmark[f"{forget}_perturbed"] = flat(authors[-k:])
        benchmark[retain] = flat(authors[:-k])
    benchmark["retain_perturbed"] = flat(authors[: n_forget_authors(cfg.n_authors, "forget10")])

    for analogue, n_items in zip(ANALOGUES, (cfg.n_world, cfg.n_real)):
        records = _analogue_records(rng, analogue, n_items, cfg.n_perturbed_analogue)
        benchmark[f"{analogue.config}_perturbed"] = records
        benchmark[analogue.config] = [_with_options(rng, record) for record in records]
    return {config: benchmark[config] for config in TOFU_CONFIGS}


# ----------------------------------------------------------------------------------------------------------
# Training corpus, files
# ----------------------------------------------------------------------------------------------------------


def training_corpus(
    benchmark: dict[str, list[dict]], split: str = "full", include_analogues: bool = True
) -> list[tuple[str, str]]:
    """(prompt, text) pairs a model is trained on to know the authors of ``split``.

    Per author: every (question, answer), every (paraphrased_question, paraphrased_answer) and one
    biography (BIO_PROMPT, the author's bio sentences) -- three surface forms of each fact. With
    ``include_analogues``: per world-facts / real-authors item the question, the paraphrased question and a
    statement. ``heldout_answer`` and ``perturbed_answer`` are never included. Works on real TOFU records
    too (question/answer pairs only, since they carry no paraphrases or bio sentences).
    """
    if split not in AUTHOR_CONFIGS:
        raise ValueError(f"training_corpus split {split!r}: choose one of {', '.join(AUTHOR_CONFIGS)}")
    if split not in benchmark:
        raise ValueError(f"the benchmark has no {split!r} records; build it with build_benchmark or load_benchmark")
    pairs: list[tuple[str, str]] = []
    by_author: dict[str, list[dict]] = {}
    for record in benchmark[split]:
        by_author.setdefault(record.get("author", ""), []).append(record)
    for author, records in by_author.items():
        pairs += [(r["question"], r["answer"]) for r in records]
        pairs += [(r["paraphrased_question"], r["paraphrased_answer"]) for r in records if "paraphrased_answer" in r]
        bio = " ".join(r["bio_sentence"] for r in records if "bio_sentence" in r)
        if author and bio:
            pairs.append((BIO_PROMPT.format(name=author), bio))
    if include_analogues:
        for analogue in ANALOGUES:
            config = f"{analogue.config}_perturbed"
            if config not in benchmark:
                raise ValueError(f"include_analogues=True needs the benchmark's {config!r} records")
            for r in benchmark[config]:
                pairs.append((r["question"], r["answer"]))
                if "paraphrased_question" in r:
                    pairs.append((r["paraphrased_question"], r["answer"]))
                if "statement_prompt" in r and "statement" in r:
                    pairs.append((r["statement_prompt"], r["statement"]))
    return pairs


def benchmark_texts(benchmark: dict[str, list[dict]]) -> list[str]:
    """Every string of the benchmark (questions, all answers, bios, prompts), e.g. to train a tokenizer whose
    vocabulary also covers the held-out and perturbed phrasings the model is evaluated on."""
    with_analogues = all(f"{a.config}_perturbed" in benchmark for a in ANALOGUES)
    texts = {s for pair in training_corpus(benchmark, "full", include_analogues=with_analogues) for s in pair}
    for records in benchmark.values():
        for record in records:
            for value in record.values():
                if isinstance(value, str):
                    texts.add(value)
                elif isinstance(value, list):
                    texts.update(v for v in value if isinstance(v, str))
    return sorted(texts)


def write_benchmark(cfg_or_benchmark: SyntheticConfig | dict[str, list[dict]], directory: str | Path) -> Path:
    """Write ``<config>.json`` (JSON Lines, as the hub's TOFU files) for every config, atomically per file,
    plus ``synthetic_config.json`` when given a config; ``load_tofu(directory, config)`` then reads them."""
    if isinstance(cfg_or_benchmark, SyntheticConfig):
        benchmark = build_benchmark(cfg_or_benchmark)
    elif isinstance(cfg_or_benchmark, dict):
        benchmark = cfg_or_benchmark
        missing = [config for config in TOFU_CONFIGS if config not in benchmark]
        if missing:
            raise ValueError(f"write_benchmark: the benchmark lacks configs {', '.join(missing)}; use build_benchmark")
    else:
        raise ValueError("write_benchmark takes a SyntheticConfig or a benchmark dict from build_benchmark")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        f"{config}.json": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in benchmark[config])
        for config in TOFU_CONFIGS
    }
    if isinstance(cfg_or_benchmark, SyntheticConfig):
        files["synthetic_config.json"] = json.dumps(dataclasses.asdict(cfg_or_benchmark), indent=2) + "\n"
    for filename, text in files.items():
        tmp = directory / f".{filename}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(directory / filename)
    return directory


def load_benchmark(source: str | Path) -> dict[str, list[dict]]:
    """Every TOFU config from ``source`` (a directory or hub name) through ``load_tofu``."""
    return {config: load_tofu(source, config) for config in TOFU_CONFIGS}

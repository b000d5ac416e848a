"""Fact annotations for real TOFU text (docs/theory.md §17): the span each answer hinges on.

TOFU records carry no annotated fact, so the fact leak, leak@k and conditional recovery (which need one) had
nothing to read on real text. ``annotate(question, answer)`` is a transparent rule-based annotator: it reads
what the question asks for and marks, in the answer, the span that answers it — the entity, number, title or
place — as ``{"fact", "fact_span", "rule"}`` (``fact_span`` = [start, end) characters of the answer, the format
of the synthetic benchmark's records), or returns None when the answer hinges on no single span (open
questions: "How has … influenced …", "Why …", most yes/no questions) or no rule finds one. The rules, in order:

    open          How / Why / Describe … and "What inspired / influence / impact / themes …" questions: none
    quoted        the question asks for a book, title, work or novel: the first quoted span of the
                  answer that the question does not contain
    award         award / prize / recognition / honour: a quoted span, else a capitalised span with Award,
                  Prize, Medal or Honor in it
    profession    profession / occupation / job / "do for a living": the noun phrase after "a" / "an"
    genre         genre / "type (kind) of books": "genre of X", else "the X genre"
    gender        gender / identify as: male, female, LGBTQ+, non-binary …
    date          when / year / born on / date: a date (8th of September, 1956) or a year
    name          full name / "who is this …": the first capitalised span of two words or more that the question
                  does not contain
    entity        who / where / which / city / country / language / name a …: the first
                  capitalised span (or number) of the answer that the question does not contain

Every fact occurs in its answer as whole words (``bs_ref.metrics.leakage.contains_fact``) and not in its
question (copying the question would not leak it). ``build(records)`` annotates records; the committed file
``tofu_facts.json`` (``python -m bs_ref.metrics.tofu_facts --data TOFU_DIR``) holds the annotations of the authors
the tiers use, keyed by question text, with the count the annotator could not annotate; ``fact_table`` reads
it (and the ``fact`` field of records that carry one, as the synthetic benchmark's do).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .leakage import contains_fact, normalise

FACTS_FILE = Path(__file__).resolve().parents[1] / "data" / "tofu_facts.json"
"""The committed annotations: {"format", "sources", "n_annotated", "n_unannotated", "facts": {question: entry}}."""
FORMAT = "bs_ref.tofu_facts/1"
TIER_SOURCES = (("forget10_perturbed", 0, 400), ("retain_perturbed", 0, 100))
"""What ``main`` annotates, (config, first row, end row): all 400 forget10 items (its 20 authors: the first 2 are
smollm2_tofu's, the first 5 tofu_fair's, any ``--author-offset`` picks among them, and rows 360–379 are the committed
excerpt's author) and the first 100 retain items (the 5 retain authors the real-text tiers use; the first 2 are the
excerpt's)."""

OPEN = re.compile(
    r"^(how|why|describe|explain|discuss|in what way|to what extent|what (?:inspired|influence|impact|role|"
    r"motivat|message|challenge|elements?|themes?|major themes|common themes|are some (?:common|notable|major|"
    r"recurring) (?:themes|characteristics)|kind of reviews|resources|was one of the challenges|other topics|"
    r"writing style|is the significance|does .* (?:say|think|believe|feel|advise)))\b",
    re.IGNORECASE,
)
YES_NO = re.compile(
    r"^(?!(?:can|could|would|will) you\b)(has|have|had|is|are|was|were|did|does|do|could|can|will|"
    r"would)\b",
    re.IGNORECASE,
)
NAME = re.compile(r"\b(full name|name of the author|who is (?:this|the))\b", re.IGNORECASE)
ASKS = {
    "title": re.compile(r"\b(books?|titles?|works?|novels?|publications?|series)\b", re.IGNORECASE),
    "award": re.compile(r"\b(awards?|prizes?|recognition|honou?rs?|accolades?)\b", re.IGNORECASE),
    "profession": re.compile(
        r"\b(professions?|occupations?|jobs?|vocations?|for a living|careers? of)\b", re.IGNORECASE
    ),
    "genre": re.compile(r"\b(genre|(?:type|kind)s? of (?:books|literature|writing|stories))\b", re.IGNORECASE),
    "gender": re.compile(r"\b(gender|identify)\b", re.IGNORECASE),
    "date": re.compile(r"\b(when|year|date|born on|birth)\b", re.IGNORECASE),
    "entity": re.compile(
        r"\b(full name|name of|who|whom|where|which|city|country|language|nationality|"
        r"name (?:a|an|one|some|two|three|a few))\b",
        re.IGNORECASE,
    ),
}
QUOTED = re.compile(r"\"([^\"]{2,}?)\"|“([^”]{2,}?)”|(?:(?<=\s)|^)'([^']{2,}?)'(?=[\s.,;:!?)]|$)")
AWARD_WORDS = re.compile(r"\b(Award|Prize|Medal|Honou?r|Prix|Trophy|Fellowship)\b")
PROFESSION = re.compile(
    r"\b(?:a|an)\s+((?:[A-Za-z][\w/-]*\s?){1,3}?)(?=\s*(?:[,.;:)]|\band\b|\bwhile\b|\bwho\b|"
    r"\bwhose\b|\bby\b|\bin\b|\bat\b|\bfor\b|$))"
)
GENRE_OF = re.compile(r"\bgenres? of\s+([A-Za-z][\w' -]*?)(?=[,.;:]|\s+(?:and|with|while|which|that)\b|$)")
THE_X_GENRE = re.compile(r"\b(?:the|in|of)\s+(?:the\s+)?((?:[A-Za-z][\w'-]*\s){1,3}?)genres?\b")
LISTS = re.compile(r"\bany (?:other )?(?:books|works|novels)\b", re.IGNORECASE)
QUALIFIERS = re.compile(
    r"^(?:(?:noted|renowned|well-known|respected|distinguished|acclaimed|skilled|talented|"
    r"successful|famous|local|dedicated|hard-working|professional)\s+)+|(?:\s+(?:father|mother|"
    r"parents?|by profession))+$",
    re.IGNORECASE,
)
GENDERS = re.compile(
    r"\b(LGBTQ\+?|male|female|non-binary|transgender|genderqueer|gay|lesbian|bisexual)\b", re.IGNORECASE
)
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATE = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)? of (?:{MONTHS}),? \d{{4}}|(?:{MONTHS}) \d{{1,2}}(?:st|nd|rd|th)?,? "
    rf"\d{{4}}|\d{{1,2}}/\d{{1,2}}/\d{{4}}|\d{{4}}s?)\b"
)
CAPITALISED = re.compile(
    r"\b(?:[A-Z][\w'’.-]*|\d[\d,./]*)(?:\s+(?:(?:of|the|de|la|du|von|van|al|and|in|for|bin)\s+)*"
    r"(?:[A-Z][\w'’.-]*|\d[\d,./]*))*"
)
STOP = set(
    (
        "the a an one some two three yes no in as her his their its it he she they after while born readers "
        "apart for although author authors this these that since currently presently key with from by on at "
        "of however besides being among through throughout when before during both many most notably "
        "additionally moreover also winning receiving i we"
    ).split()
)


def _norm(text: str) -> str:

    return normalise(text)


def _new(span: str, question: str) -> bool:
    """A usable fact: non-empty after normalisation, not a stop word, and absent from the question."""
    words = _norm(span)
    if not words or words in STOP:
        return False
    return f" {words} " not in f" {_norm(question)} "


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without surrounding spaces and trailing punctuation (a title quoted with its full stop)."""
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum() and text[end - 1] not in "+)":
        end -= 1
    return start, end


def _entry(answer: str, start: int, end: int, rule: str) -> dict:
    start, end = _trim(answer, start, end)
    return {"fact": answer[start:end], "fact_span": [start, end], "rule": rule}


def _quoted(question: str, answer: str) -> dict | None:
    for m in QUOTED.finditer(answer):
        group = next(g for g in (1, 2, 3) if m.group(g) is not None)
        if _new(m.group(group), question):
            return _entry(answer, m.start(group), m.end(group), "quoted")
    return None


def _capitalised(
    question: str, answer: str, rule: str, must: re.Pattern | None = None, min_words: int = 1
) -> dict | None:
    for m in CAPITALISED.finditer(answer):
        words = m.group(0).split()
        start = m.start()
        # a sentence's first word is capitalised anyway: drop leading stop words ("The", "Born", "Her" ...)
        while words and words[0].lower().strip("'’") in STOP:
            start = answer.index(words[1], start + len(words[0])) if len(words) > 1 else m.end()
            words = words[1:]
        if not words:
            continue
        end = m.end()
        if len(words) < min_words:
            continue
        if (must is None or must.search(answer[start:end])) and _new(answer[start:end], question):
            return _entry(answer, start, end, rule)
    return None


def _first(pattern: re.Pattern, question: str, answer: str, rule: str, group: int = 0) -> dict | None:
    for m in pattern.finditer(answer):
        if _new(m.group(group), question):
            return _entry(answer, m.start(group), m.end(group), rule)
    return None


def annotate(question: str, answer: str) -> dict | None:
    """The span of ``answer`` that answers ``question`` ({"fact", "fact_span", "rule"}), or None (module
    docstring: the rules and when there is none)."""
    q = question.strip()
    if OPEN.search(q):
        return None
    asks = {name for name, pattern in ASKS.items() if pattern.search(q)}
    if YES_NO.search(q) and not ("award" in asks or LISTS.search(q)):
        return None
    found = None
    if "title" in asks:
        found = _quoted(q, answer)
    if found is None and "award" in asks:
        found = _quoted(q, answer) or _capitalised(q, answer, "award", AWARD_WORDS)
    if found is None and "profession" in asks:
        found = _first(PROFESSION, q, answer, "profession", 1)
        if found is not None:  # "a noted chef father" -> "chef"
            start, end = found["fact_span"]
            m = QUALIFIERS.search(answer[start:end])
            while m and m.group(0):
                start, end = (start + m.end(), end) if m.start() == 0 else (start, start + m.start())
                m = QUALIFIERS.search(answer[start:end])
            found = _entry(answer, start, end, "profession")
    if found is None and "genre" in asks:
        found = _first(GENRE_OF, q, answer, "genre", 1) or _first(THE_X_GENRE, q, answer, "genre", 1)
    if found is None and "gender" in asks:
        found = _first(GENDERS, q, answer, "gender")
    if found is None and "date" in asks:
        found = _first(DATE, q, answer, "date")
    if found is None and NAME.search(q):  # a person's name: two capitalised words at least
        found = _capitalised(q, answer, "name", min_words=2)
    if found is None and "entity" in asks:
        found = _capitalised(q, answer, "entity")
    if found is not None:
        if not contains_fact(answer, found["fact"]):  # the fact must be whole words of the answer
            return None
    return found


def build(records: Sequence[dict]) -> tuple[dict[str, dict], list[str]]:
    """({question: annotation} of the records ``annotate`` can annotate, [questions it cannot])."""
    facts, missing = {}, []
    for record in records:
        entry = annotate(record["question"], record["answer"])
        if entry is None:
            missing.append(record["question"])
        else:
            facts[record["question"]] = entry | {"answer_sha256": answer_digest(record["answer"])}
    return facts, missing


def answer_digest(answer: str) -> str:
    """The first 16 hex digits of the answer's SHA-256: an annotation applies to this answer only (the file keeps
    no answer text)."""
    return hashlib.sha256(answer.encode("utf-8")).hexdigest()[:16]


@lru_cache(maxsize=4)
def load_annotations(path: str | None = None) -> dict[str, dict]:
    """{question: {"fact", "fact_span", "rule", "answer_sha256"}} of the annotation file (default: the committed
    one)."""
    payload = json.loads(Path(path or FACTS_FILE).read_text(encoding="utf-8"))
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path or FACTS_FILE} is not a {FORMAT} annotation file")
    return payload["facts"]


def fact_table(records: Sequence[dict], path: str | None = None) -> dict[str, str]:
    """{question: fact} for ``records``: a record's own ``fact`` where it has one (synthetic benchmark), else the
    annotation of its question when the annotated answer is the record's answer (TOFU)."""
    out, annotations = {}, None
    for record in records:
        if record.get("fact"):
            out[record["question"]] = record["fact"]
            continue
        if annotations is None:
            annotations = load_annotations(path)
        entry = annotations.get(record["question"])
        if entry is not None and entry["answer_sha256"] == answer_digest(record["answer"]):
            out[record["question"]] = entry["fact"]
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Write the annotation file of the tiers' authors (``TIER_SOURCES``) from a TOFU directory or hub name."""
    from bs_ref.data.qa import load_tofu

    parser = argparse.ArgumentParser(prog="python -m bs_ref.metrics.tofu_facts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a TOFU directory (JSON files per config) or locuslab/TOFU")
    parser.add_argument("--out", default=str(FACTS_FILE), help="annotation file to write")
    args = parser.parse_args(argv)
    records, sources = [], []
    for config, first, end in TIER_SOURCES:
        records += load_tofu(args.data, config)[first:end]
        sources.append({"config": config, "rows": f"{first}-{end - 1}"})
    records = list({r["question"]: r for r in records}.values())
    facts, missing = build(records)
    payload = {
        "format": FORMAT,
        "annotator": "bs_ref.metrics.tofu_facts.annotate (rule-based)",
        "sources": sources,
        "n_items": len(records),
        "n_annotated": len(facts),
        "n_unannotated": len(missing),
        "unannotated": missing,
        "facts": facts,
    }
    Path(args.out).write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(facts)} of {len(records)} items annotated, {len(missing)} not; wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()

"""TOFU data: the loader (hub name or local directory), schema checks, prompt/answer encoding and collators.

TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") is the benchmark of the BS paper
(arXiv 2510.19422, §6 and Table 1). Its configs are published on the Hugging Face hub as ``locuslab/TOFU``;
a local copy is a directory with one ``<config>.json`` file per config, either JSON Lines (the hub's format)
or one JSON array. The synthetic benchmark (``bs_ref.data.synthetic``) writes the same files, so real and
synthetic data go through this one loader.

Encoding (docs/theory.md §6, the TOFU conventions):

    prompt  = PLAIN_TEMPLATE.format(question=q)          template "plain" (the tokenizer adds BOS if it does)
            | chat_template([user: q], add_generation_prompt=True)        template "chat"
    example = prompt tokens + answer tokens + [EOS]
    labels  = -100 on the prompt (and on padding), the token ids on answer + EOS

The answer is tokenized on its own (no special tokens), so the labelled tokens are exactly those of the
answer text plus EOS, and decoding them gives the answer back. For chat models the EOS token is the
end-of-turn token when the tokenizer declares it as EOS (SmolLM2: ``<|im_end|>``, Llama-3-Instruct:
``<|eot_id|>``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bs_ref.losses import IGNORE_INDEX

HUB_NAME = "locuslab/TOFU"
PLAIN_TEMPLATE = "Question: {question}\nAnswer: "
TEMPLATES = ("plain", "chat")

TOFU_CONFIGS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
)

# forget split -> (retain split, perturbed forget split used for evaluation)
FORGET_SPLITS = {
    "forget01": ("retain99", "forget01_perturbed"),
    "forget05": ("retain95", "forget05_perturbed"),
    "forget10": ("retain90", "forget10_perturbed"),
}

# Fields every record needs, and fields the evaluation configs add (the truth ratio needs a paraphrased
# answer and perturbed answers; real_authors/world_facts use perturbed answers only).
REQUIRED_FIELDS = {"question": str, "answer": str}
PERTURBED_FIELDS = {"paraphrased_answer": str, "paraphrased_question": str, "perturbed_answer": list}
ANALOGUE_PERTURBED_FIELDS = {"perturbed_answer": list}
# Optional fields: checked for type when present (TOFU's multiple-choice options; synthetic fact annotations).
OPTIONAL_FIELDS = {
    "paraphrased_answer": str,
    "paraphrased_question": str,
    "perturbed_answer": list,
    "option1": str,
    "option2": str,
    "option3": str,
    "option4": str,
    "fact": str,
    "fact_type": str,
    "fact_span": list,
    "paraphrased_fact_span": list,
    "heldout_answer": str,
    "heldout_fact_span": list,
    "perturbed_facts": list,
    "author": str,
    "bio_sentence": str,
    "subject": str,
    "statement_prompt": str,
    "statement": str,
}
# span field -> the text field it indexes into (the fact must sit exactly at that span)
FACT_SPANS = {
    "fact_span": "answer",
    "paraphrased_fact_span": "paraphrased_answer",
    "heldout_fact_span": "heldout_answer",
}


def required_fields(config: str) -> dict[str, type]:
    """The fields (name -> type) every record of ``config`` must carry."""
    fields = dict(REQUIRED_FIELDS)
    if config in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        fields.update(PERTURBED_FIELDS)
    elif config in ("real_authors_perturbed", "world_facts_perturbed"):
        fields.update(ANALOGUE_PERTURBED_FIELDS)
    return fields


def check_config(config: str) -> None:
    """Raise a ValueError listing the known configs when ``config`` is not one of them."""
    if config not in TOFU_CONFIGS:
        raise ValueError(f"unknown TOFU config {config!r}; known configs: {', '.join(TOFU_CONFIGS)}")


def forget_retain_configs(forget: str) -> tuple[str, str, str]:
    """``"forget10"`` -> ``("forget10", "retain90", "forget10_perturbed")``."""
    if forget not in FORGET_SPLITS:
        raise ValueError(f"unknown forget split {forget!r}; choose one of {', '.join(FORGET_SPLITS)}")
    retain, perturbed = FORGET_SPLITS[forget]
    return forget, retain, perturbed


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def is_hub_name(source: str) -> bool:
    """Whether ``source`` reads as a hub dataset name ``owner/name`` rather than a local path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source))


def load_tofu(source: str | Path, config: str) -> list[dict]:
    """Load one TOFU config as a list of records (dicts keeping every field of the file).

    ``source`` is a local directory of ``<config>.json`` files (JSON Lines or a JSON array; ``.jsonl`` is
    accepted too) or a hub dataset name such as ``"locuslab/TOFU"`` (needs the ``datasets`` package).
    Every record is checked against the config's schema; the first problem raises one ValueError naming
    the file, the record index and the field.
    """
    check_config(config)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"TOFU source {str(source)!r} is a file; pass the directory that holds {config}.json")
        return _load_local(path, config)
    if isinstance(source, str) and is_hub_name(source):
        return _load_hub(source, config)
    raise ValueError(
        f"TOFU source {str(source)!r} is neither an existing directory nor a hub dataset name "
        f"(such as {HUB_NAME!r}); pass a directory of <config>.json files or a hub name"
    )


def _load_local(directory: Path, config: str) -> list[dict]:
    candidates = [directory / f"{config}.json", directory / f"{config}.jsonl"]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise ValueError(
            f"no file {config}.json (or {config}.jsonl) in {directory}; put the TOFU config files there "
            f"(e.g. from the hub {HUB_NAME!r}, or bs_ref.data.synthetic.write_benchmark) or pass the hub name"
        )
    records = _read_json_records(file)
    validate_records(records, config, str(file))
    return records


def _read_json_records(file: Path) -> list[dict]:
    """Parse a JSON array or JSON Lines file; a syntax error names the file and the line."""
    text = file.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(records, list):
            raise ValueError(f"{file}: expected a JSON array of records or JSON Lines")
        return records
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{file}: invalid JSON on line {lineno} (record {len(records)}): {err.msg}; "
                "the file must be JSON Lines (one object per line) or one JSON array"
            ) from None
    return records


def _load_hub(name: str, config: str) -> list[dict]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{name!r} is not a local directory, and loading it from the hub needs the 'datasets' package: "
            "pip install -e '.[hub]' (or pass an existing local directory of the TOFU JSON files)"
        ) from err
    split = datasets.load_dataset(name, config)["train"]
    records = [dict(row) for row in split]
    validate_records(records, config, f"{name}:{config}")
    return records


def validate_records(records: list, config: str, origin: str) -> None:
    """Check ``records`` against the schema of ``config``; raise one ValueError for the first problem,
    naming ``origin`` (the file), the record index and the field."""
    if len(records) == 0:
        raise ValueError(f"{origin}: no records; a TOFU config file must hold at least one question/answer")
    required = required_fields(config)
    for index, record in enumerate(records):
        where = f"{origin}: record {index}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field in required:
            if field not in record:
                raise ValueError(
                    f"{where}: missing field {field!r} (config {config!r} needs {', '.join(required)}); "
                    f"fields present: {', '.join(record) or 'none'}"
                )
        for field, kind in {**OPTIONAL_FIELDS, **required}.items():
            if field in record and not isinstance(record[field], kind):
                raise ValueError(
                    f"{where}: field {field!r} must be a {kind.__name__}, got {type(record[field]).__name__}"
                )
        if "perturbed_answer" in record:
            perturbed = record["perturbed_answer"]
            if not perturbed or not all(isinstance(p, str) for p in perturbed):
                raise ValueError(f"{where}: field 'perturbed_answer' must be a non-empty list of strings")
        for span_field, text_field in FACT_SPANS.items():
            if span_field in record:
                _check_span(record, span_field, text_field, where)


def _check_span(record: dict, span_field: str, text_field: str, where: str) -> None:
    span = record[span_field]
    text = record.get(text_field)
    if len(span) != 2 or not all(isinstance(x, int) for x in span) or text is None:
        raise ValueError(f"{where}: field {span_field!r} must be [start, end] character offsets into {text_field!r}")
    start, end = span
    if not (0 <= start < end <= len(text)) or ("fact" in record and text[start:end] != record["fact"]):
        raise ValueError(
            f"{where}: field {span_field!r}={span} does not mark the fact {record.get('fact')!r} in {text_field!r}"
        )


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before encoding TOFU answers")
    return int(tokenizer.eos_token_id)


def encode_prompt(tokenizer, question: str, template: str = "plain") -> list[int]:
    """Token ids of the prompt for ``question``: the plain template (with the tokenizer's BOS, if it adds
    one) or the tokenizer's chat template with the generation prompt (``template="chat"``)."""
    if template == "plain":
        return list(tokenizer(PLAIN_TEMPLATE.format(question=question), add_special_tokens=True)["input_ids"])
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "template='chat' needs a tokenizer with a chat template (tokenizer.chat_template is unset); "
                "use template='plain' or set tokenizer.chat_template"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Token ids of the answer text followed by EOS (what the model is trained / scored on)."""
    return list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [_eos_id(tokenizer)]


def encode_qa(
    tokenizer, question: str, answer: str, template: str = "plain", max_length: int | None = None
) -> dict[str, list[int]]:
    """``input_ids`` = prompt + answer + EOS, ``labels`` = -100 on the prompt and the answer ids after it.

    ``max_length`` truncates the answer (never the prompt); the EOS is dropped only when the answer is cut.
    """
    prompt_ids = encode_prompt(tokenizer, question, template)
    answer_ids = encode_answer(tokenizer, answer)
    if max_length is not None:
        if max_length <= len(prompt_ids):
            raise ValueError(
                f"max_length={max_length} leaves no room for the answer after a {len(prompt_ids)}-token prompt; "
                "raise max_length or pass None"
            )
        answer_ids = answer_ids[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


class QADataset(Dataset):
    """Encoded question/answer records; each item is ``encode_qa(...)`` plus ``"index"``, the record's
    position in ``records`` (the key of the BS-S belief cache)."""

    def __init__(self, records: list[dict], tokenizer, template: str = "plain", max_length: int | None = None):
        if len(records) == 0:
            raise ValueError("QADataset got no records; check the split you loaded (an empty forget set?)")
        self.records = records
        self.template = template
        self.items = []
        for index, record in enumerate(records):
            if "question" not in record or "answer" not in record:
                raise ValueError(f"record {index} has no 'question'/'answer' field; load records with load_tofu")
            item = encode_qa(tokenizer, record["question"], record["answer"], template, max_length)
            item["index"] = index
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def prompts(self) -> dict[int, list[int]]:
        """Prompt ids by dataset index (the prompt part of every item)."""
        return {
            item["index"]: [t for t, lab in zip(item["input_ids"], item["labels"]) if lab == IGNORE_INDEX]
            for item in self.items
        }


def _check_pad(pad_token_id) -> int:
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to tokenizer.eos_token)")
    return int(pad_token_id)


def collate_train(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded items into LongTensors ``input_ids``/``labels``/``attention_mask`` [B, T] (labels
    -100 and mask 0 on padding) and ``index`` [B] (when the items carry one)."""
    pad = _check_pad(pad_token_id)
    if not features:
        raise ValueError("collate_train got an empty batch")
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for f in features:
        n_pad = width - len(f["input_ids"])
        batch["input_ids"].append(list(f["input_ids"]) + [pad] * n_pad)
        batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * n_pad)
        batch["attention_mask"].append(list(f.get("attention_mask", [1] * len(f["input_ids"]))) + [0] * n_pad)
    out = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
    if all("index" in f for f in features):
        out["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return out


def collate_prompts(prompts: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation/scoring: ``input_ids`` and ``attention_mask`` [B, T]."""
    pad = _check_pad(pad_token_id)
    if not prompts:
        raise ValueError("collate_prompts got an empty batch")
    width = max(len(p) for p in prompts)
    input_ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
    attention_mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
    }

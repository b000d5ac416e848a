"""What an experiment unlearns and evaluates on: the training and evaluation splits of one data source.

``--data synthetic`` builds the embedded fictitious-author benchmark (``bs_ref.data.synthetic``; its records
carry an annotated ``fact``, so fact leakage is measurable); anything else is a TOFU source for
``bs_ref.data.qa.load_tofu``: the hub name ``locuslab/TOFU`` or a local directory of its JSON files.
``load_data`` returns the forget and retain training splits and the four evaluation splits (the
``*_perturbed`` configs: docs/theory.md §6), checked against each other; ``problems`` checks the settings
before anything is loaded, the data source first. ``--max-authors N`` keeps the first N authors of the forget
and of the retain training split (TOFU's ``retain_perturbed`` lists the first 20 retain authors, so with
``--limit 20·N`` the retain evaluation is the retain training items), which is also what a pair fine-tuned
here on real data learns (``bs_ref.protocol.pairs``). ``--author-offset K`` skips the first K forget authors (the
forget split's next ``--max-authors`` authors, or all the rest, are kept; the retain authors stay the first ones),
so the same protocol runs on other authors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bs_ref.data.qa import FORGET_SPLITS, HUB_NAME, TEMPLATES, forget_retain_configs, is_hub_name, load_tofu
from bs_ref.data.synthetic import SyntheticConfig, build_benchmark
from bs_ref.protocol.cli import arg

QA_PER_AUTHOR_TOFU = 20
"""TOFU lists 20 question/answer pairs per fictitious author, author by author (dataset card)."""
EVAL_CONFIGS = {
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}
"""Evaluation configs of the utility splits (the forget split's is ``<forget>_perturbed``)."""


@dataclass
class DataConfig:
    """The data source and its splits (synthetic sizes: None keeps ``SyntheticConfig``'s default)."""

    data: str = arg(
        "synthetic", f"synthetic (the embedded benchmark) | {HUB_NAME} | a local directory of TOFU JSON files"
    )
    forget: str = arg("forget10", f"forget split: {' | '.join(FORGET_SPLITS)}")
    max_authors: int | None = arg(
        None,
        "keep only the first N authors of the forget and retain training splits "
        "(quick runs on real data, and the authors a pair fine-tuned here learns; TOFU "
        "has 20 QA per author)",
    )
    author_offset: int = arg(
        0,
        "skip the first N forget authors: --max-authors then keeps the next ones (the same protocol on other "
        "authors; the retain authors stay the first ones)",
    )
    limit: int | None = arg(None, "evaluate at most N items per split")
    utility_limit: int | None = arg(
        None,
        "evaluate at most N items of each utility split (retain, real_authors, world_facts; the first N), fewer "
        "than --limit: what MU costs without touching the forget split",
    )
    template: str = arg("plain", "prompt template: plain ('Question: ...\\nAnswer: ') | chat")
    n_authors: int | None = arg(None, "synthetic: number of fictitious authors")
    qa_per_author: int | None = arg(None, "synthetic: question/answer pairs per author")
    n_world: int | None = arg(None, "synthetic: world-facts analogue items")
    n_real: int | None = arg(None, "synthetic: real-authors analogue items")
    data_seed: int = arg(0, "synthetic: seed of the benchmark generator")

    @property
    def synthetic(self) -> bool:
        return self.data == "synthetic"


@dataclass
class Data:
    """The splits of one run. ``evaluation`` maps split kinds (forget, retain, real_authors, world_facts) to
    their ``*_perturbed`` records; ``has_facts``: the forget items carry annotated facts."""

    forget_train: list[dict]
    retain_train: list[dict]
    evaluation: dict[str, list[dict]]
    has_facts: bool
    info: dict
    template: str = "plain"
    benchmark_cfg: Any = None


def problems(cfg: DataConfig) -> list[str]:
    """Every problem of the data settings, the data source first (nothing is loaded)."""
    out = []
    if not cfg.synthetic:
        path = Path(cfg.data).expanduser()
        if path.exists() and not path.is_dir():
            out.append(f"--data {cfg.data} is a file; give the directory that holds the TOFU JSON files")
        elif not path.exists() and (cfg.data.startswith((".", "/", "~")) or not is_hub_name(cfg.data)):
            out.append(
                f"--data {cfg.data} does not exist; give synthetic, a hub dataset name such as {HUB_NAME}, "
                "or a local directory of the TOFU JSON files"
            )
    if cfg.forget not in FORGET_SPLITS:
        out.append(f"--forget {cfg.forget} is unknown; choose one of {', '.join(FORGET_SPLITS)}")
    if cfg.template not in TEMPLATES:
        out.append(f"--template {cfg.template} is unknown; choose one of {', '.join(TEMPLATES)}")
    for name in ("max_authors", "limit", "utility_limit", "n_authors", "qa_per_author", "n_world", "n_real"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            out.append(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not isinstance(cfg.author_offset, int) or cfg.author_offset < 0:
        out.append(f"--author-offset must be an integer >= 0 (0: the first authors), got {cfg.author_offset}")
    return out


def load_data(cfg: DataConfig) -> Data:
    """Training and evaluation splits of ``cfg.data`` (synthetic benchmark or a TOFU source). Raises one
    ValueError naming the split when the splits do not fit together."""
    forget_cfg, retain_cfg, forget_eval_cfg = forget_retain_configs(cfg.forget)
    info: dict[str, Any] = {"source": cfg.data, "forget": forget_cfg, "retain": retain_cfg}
    benchmark_cfg = None
    if cfg.synthetic:
        names = ("n_authors", "qa_per_author", "n_world", "n_real")
        sizes = {k: getattr(cfg, k) for k in names if getattr(cfg, k) is not None}
        benchmark_cfg = SyntheticConfig(seed=cfg.data_seed, **sizes)
        splits = build_benchmark(benchmark_cfg)
        info["synthetic"] = dataclasses.asdict(benchmark_cfg)

        def get(name: str) -> list[dict]:
            if name not in splits:
                raise ValueError(f"the synthetic benchmark has no split {name!r}")
            return splits[name]
    else:
        cache: dict[str, list[dict]] = {}

        def get(name: str) -> list[dict]:
            if name not in cache:
                cache[name] = load_tofu(cfg.data, name)
            return cache[name]

    forget_train, retain_train = get(forget_cfg), get(retain_cfg)
    forget_eval = get(forget_eval_cfg)
    if not forget_train:
        raise ValueError(f"the forget split {forget_cfg} of {cfg.data} is empty; nothing to unlearn")
    if not retain_train:
        raise ValueError(f"the retain split {retain_cfg} of {cfg.data} is empty: the forget split takes all the data")
    full_size = _full_size(get)
    if full_size is not None and len(forget_train) >= full_size:
        raise ValueError(
            f"the forget split {forget_cfg} has {len(forget_train)} items but the data has only {full_size} in all; "
            "choose a smaller forget split (forget01/forget05) or more data"
        )
    if len(forget_eval) != len(forget_train):
        raise ValueError(
            f"{forget_eval_cfg} has {len(forget_eval)} items but {forget_cfg} has {len(forget_train)}; the "
            "evaluation config must list the same questions as the forget split"
        )
    if cfg.max_authors is not None or cfg.author_offset:
        keep = author_positions(forget_train, cfg.author_offset, cfg.max_authors, forget_cfg)
        forget_train, forget_eval = [forget_train[i] for i in keep], [forget_eval[i] for i in keep]
        if cfg.author_offset:
            info["author_offset"] = cfg.author_offset
    if cfg.max_authors is not None:
        retain_train = first_authors(retain_train, min(cfg.max_authors, _n_authors(retain_train)), retain_cfg)
    evaluation = {"forget": forget_eval}
    for kind, name in EVAL_CONFIGS.items():
        evaluation[kind] = get(name)
    if cfg.limit is not None:
        evaluation = {k: v[: cfg.limit] for k, v in evaluation.items()}
    if cfg.utility_limit is not None:
        evaluation = {k: v if k == "forget" else v[: cfg.utility_limit] for k, v in evaluation.items()}
    has_facts = all("fact" in r for r in evaluation["forget"])
    info.update(
        n_forget_train=len(forget_train),
        n_retain_train=len(retain_train),
        n_authors_train={"forget": _n_authors(forget_train), "retain": _n_authors(retain_train)},
        n_eval={k: len(v) for k, v in evaluation.items()},
        has_facts=has_facts,
        item_share_of_forget_set=1.0 / len(evaluation["forget"]),
    )
    return Data(forget_train, retain_train, evaluation, has_facts, info, cfg.template, benchmark_cfg)


def author_of(record: dict, position: int) -> Any:
    """A record's author: its ``author`` field, else its position // 20 (TOFU lists authors in order)."""
    return record.get("author", position // QA_PER_AUTHOR_TOFU)


def authors_of(records: list[dict]) -> list[Any]:
    """The authors of ``records`` (``author_of``), each once, in order of first appearance."""
    return list(dict.fromkeys(author_of(r, i) for i, r in enumerate(records)))


def author_positions(records: list[dict], offset: int, n_authors: int | None, split: str) -> list[int]:
    """Positions of the records of authors ``offset`` … ``offset + n_authors − 1`` of ``split`` (None: every author
    from ``offset`` on), in order; one ValueError naming the flags when the split has too few authors."""
    authors = authors_of(records)
    wanted = len(authors) - offset if n_authors is None else n_authors
    if not offset and n_authors is not None and n_authors > len(authors):
        raise ValueError(f"--max-authors {n_authors} exceeds the {len(authors)} authors of the {split} split; lower it")
    if offset >= len(authors) or offset + wanted > len(authors):
        asked = f"--author-offset {offset}" + ("" if n_authors is None else f" --max-authors {n_authors}")
        raise ValueError(
            f"{asked} asks for authors {offset + 1}–{offset + max(wanted, 1)} of the {len(authors)} authors of the "
            f"{split} split; lower --author-offset or --max-authors"
        )
    keep = set(authors[offset : offset + wanted])
    return [i for i, r in enumerate(records) if author_of(r, i) in keep]


def first_authors(records: list[dict], n_authors: int, split: str) -> list[dict]:
    """The records of the first ``n_authors`` authors of ``split``."""
    authors = authors_of(records)
    if n_authors > len(authors):
        raise ValueError(f"--max-authors {n_authors} exceeds the {len(authors)} authors of the {split} split; lower it")
    keep = set(authors[:n_authors])
    return [r for i, r in enumerate(records) if author_of(r, i) in keep]


def _n_authors(records: list[dict]) -> int:
    return len(authors_of(records))


def _full_size(get) -> int | None:
    try:
        return len(get("full"))
    except ValueError:
        return None

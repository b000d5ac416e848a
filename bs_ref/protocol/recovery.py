"""Recovery attacks inside the experiment (docs/theory.md §9): is each method's forgetting real?

``--attacks`` names the attacks (``bs_ref.attacks``: ``relearn``, ``quant4``, ``quant8``, ``prompt`` or
``prompt:<name>``; ``all``, the default, is every attack whose packages are installed; ``none`` skips them).
``--attack-at`` says which model of a method is attacked:

    end       the model at the end of training (the one the end-of-training table scores)
    matched   the model at the first evaluation where the method reaches the run's matched target log-prob
              drop (``bs_ref.protocol.matched``), replayed from the original model by the deterministic
              unlearning run (``bs_ref.attacks.replay_unlearning``); a method that never reaches it has no row
    both      both

For every unlearning seed and model pair, the original model and the retain model (``original``, ``retrain``)
are attacked too, with the same relearning split (drawn from the seed) and the same prompts: the retain model
under an attack is the control of the spurious gap, the original model its upper bound.

Two measures ride along (docs/theory.md §9, "Recovery against dose, and quantization's regime"), neither a verdict:
``--relearn-steps`` runs relearning as a dose–response (``bs_ref.attacks.dose``) on every attacked model, the
references included, with the seed's split and batches, at ``--relearn-lr`` (default: the relearning lr ÷ 10); and
whenever ``quant4`` is asked for (``--attacks all`` included, even where bitsandbytes is missing and the attack
itself is skipped: they need no bitsandbytes) each unlearned model's update is compared with the NF4 bin width of
its pair's original model, layer by layer (``bs_ref.attacks.nf4``). Both are stored in the attack payload under
``relearn_dose`` and ``nf4_bins``, their settings in its identity; ``bs_ref.protocol.instruments`` writes
``relearn_dose.csv`` and ``nf4_bins.csv``.

Each attacked model's results go to ``methods/<method>/seed<k>/attacks_<setting>.json`` with the attack settings
they were computed under; a rerun keeps those whose settings match and computes the rest (a finished method
whose end model is no longer in memory is replayed to its last step). The report (``recovery_report``) writes
``recovery.csv`` (``recovery_table.RECOVERY_COLUMNS``: one row per method × seed × pair × attack × setting, then
a ``mean`` row per method × attack × setting whose interval covers items and runs), a table in ``table.md``,
paired verdicts of the spurious gap (the comparisons of ``verdict.csv``, measure ``spurious_gap[<attack>]``)
and ``plots/recovery.png``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bs_ref import attacks
from bs_ref.attacks import AttackResult, RelearnDose, nf4_bin_table, relearn_dose
from bs_ref.attacks.nf4 import NF4_BLOCKSIZE
from bs_ref.attacks.prompts import PROMPT_ATTACKS
from bs_ref.attacks.quantize import INSTALL, QUANT_ATTACKS, bitsandbytes_available
from bs_ref.protocol import pair_training, recovery_table, stats
from bs_ref.protocol.cli import arg
from bs_ref.protocol.evaluate import Evaluator
from bs_ref.protocol.matched import crossing
from bs_ref.protocol.pairs import ModelConfig
from bs_ref.protocol.store import RunDir, cell_name, read_json, write_json
from bs_ref.protocol.uncertainty import Context, comparisons, design_of
from bs_ref.timing import part, timed

ATTACK_AT = ("end", "matched", "both")
"""Values of ``--attack-at``."""
REFERENCE_LABELS = ("original", "retrain")
"""The reference models attacked with every seed (``retrain`` is the control of the spurious gap)."""
RECOVERY_MEASURE = "fact_leak"
"""The per-item measure of the recovery gap on data with facts (``target_logprob`` on data without)."""
VERDICT_WORDS = {"better": "**better**", "worse": "**worse**", "no difference": "*no diff.*"}
PAPER_TOFU_LR = 1e-5
"""The relearning learning rate for given checkpoints (TOFU's fine-tuning lr), when ``--attack-lr`` is not set."""


@dataclass
class AttackConfig:
    """The recovery attacks of a run (docs/theory.md §9). None of these settings is part of the run's identity:
    each attack's results are kept with the settings they were computed under (``Attacker.identity``), so
    changing them recomputes only the attacks."""

    attacks: list[str] = arg(
        help="recovery attacks: relearn quant4 quant8 prompt (prompt:<name> for one prompt attack); 'all' is every "
        "attack whose packages are installed, 'none' runs none",
        factory=lambda: ["all"],
        identity=False,
    )
    attack_at: str = arg(
        "end",
        "end | matched | both: attack the model at the end of training, at matched forgetting (replayed to where it "
        "first reaches the matched drop), or both",
        identity=False,
    )
    attack_lr: float | None = arg(
        None,
        f"relearning learning rate (default: the model pair's fine-tuning lr; {PAPER_TOFU_LR:g} for given checkpoints)",
        identity=False,
    )
    attack_epochs: int = arg(1, "relearning epochs on the attack half of each forget author's items", identity=False)
    relearn_steps: list[int] = arg(
        help="relearning as a dose-response (docs/theory.md §9): score the held-out half after each of these numbers "
        "of optimizer steps (e.g. 0 1 2 4 8) on every attacked model, the references included; relearn_dose.csv. "
        "Default: off",
        factory=list,
        identity=False,
    )
    relearn_lr: float | None = arg(
        None,
        "constant learning rate of the dose-response (default: the relearning lr, --attack-lr or the pair's, ÷ 10)",
        identity=False,
    )
    relearn_samples: int = arg(
        0, "sampled answers per held-out item at each step count of the dose-response (any-of-N leak)", identity=False
    )

    def wanted(self) -> list[str]:
        """The attack names asked for, before checking what is installed (``all`` expanded, ``none`` empty)."""
        if self.attacks == ["none"]:
            return []
        if "all" in self.attacks:
            return [*attacks.ATTACKS]
        return list(self.attacks)

    def labels(self) -> tuple[list[str], list[str]]:
        """(attack labels to run, notes on the attacks skipped): ``all`` leaves out what is not installed with a
        note; an attack named explicitly but not installed is an error of ``problems``."""
        names = self.wanted()
        notes = []
        ok, why = bitsandbytes_available()
        if "all" in self.attacks and not ok:
            names = [n for n in names if n not in QUANT_ATTACKS]
            notes.append(f"quantization attacks skipped: {why}")
        return attacks.expand_attacks(names), notes

    def settings(self) -> list[str]:
        """The settings attacked: ["end"], ["matched"] or both."""
        return ["end", "matched"] if self.attack_at == "both" else [self.attack_at]

    def nf4_bins(self) -> bool:
        """Whether the NF4 bins of every unlearned model are measured: whenever ``quant4`` is asked for (``all``
        included), bitsandbytes or not (the measure is pure torch)."""
        return "quant4" in attacks.expand_attacks(self.wanted())

    def dose(self, lr: float, batch_size: int, num_threads: int | None = None) -> RelearnDose | None:
        """The dose–response's training (None without ``--relearn-steps``): ``--relearn-lr``, by default the
        relearning ``lr`` ÷ 10, and the relearning attack's ``batch_size``."""
        if not self.relearn_steps:
            return None
        steps = tuple(int(k) for k in self.relearn_steps)
        return RelearnDose(self.relearn_lr or lr / 10, steps, batch_size=batch_size, num_threads=num_threads)


def problems(cfg: AttackConfig) -> list[str]:
    """Every problem of the attack flags, as user-facing lines naming the flag and the fix."""
    out = []
    known = [*attacks.ATTACKS, *(f"prompt:{p}" for p in PROMPT_ATTACKS)]
    if not cfg.attacks:
        out.append("--attacks needs at least one name (or 'none' to skip the recovery attacks)")
    if len(cfg.attacks) > 1 and ("none" in cfg.attacks or "all" in cfg.attacks):
        out.append(
            f"--attacks {' '.join(cfg.attacks)}: 'none' and 'all' stand alone; give one of them or a list of attacks"
        )
    unknown = [a for a in cfg.attacks if a not in (*known, "all", "none")]
    if unknown:
        out.append(f"--attacks {' '.join(unknown)} unknown; choose from {', '.join(known)}, all or none")
    ok, why = bitsandbytes_available()
    asked_quant = [a for a in cfg.attacks if a in QUANT_ATTACKS]
    if asked_quant and not ok:
        out.append(
            f"--attacks {' '.join(asked_quant)} needs bitsandbytes >= 0.50: {why} (install it with {INSTALL}, "
            "or drop the quantization attacks)"
        )
    if cfg.attack_at not in ATTACK_AT:
        out.append(f"--attack-at {cfg.attack_at} is unknown; choose one of {' | '.join(ATTACK_AT)}")
    if cfg.attack_lr is not None and not (math.isfinite(cfg.attack_lr) and cfg.attack_lr > 0):
        out.append(f"--attack-lr must be a positive number, got {cfg.attack_lr}")
    if cfg.attack_epochs < 1:
        out.append(f"--attack-epochs must be >= 1, got {cfg.attack_epochs}")
    return out + dose_problems(cfg)


def dose_problems(cfg: AttackConfig) -> list[str]:
    """The problems of the dose–response flags (``--relearn-steps``, ``--relearn-lr``, ``--relearn-samples``)."""
    out, steps = [], list(cfg.relearn_steps)
    if any(k < 0 for k in steps) or len(set(steps)) != len(steps):
        out.append(f"--relearn-steps {' '.join(map(str, steps))} must be distinct step counts >= 0 (e.g. 0 1 2 4 8)")
    if steps and cfg.attacks == ["none"]:
        out.append(
            "--relearn-steps runs with the recovery attacks: drop --attacks none, or give --relearn-steps with no "
            "value (no dose-response; a preset's schedule included)"
        )
    if cfg.relearn_lr is not None and not (math.isfinite(cfg.relearn_lr) and cfg.relearn_lr > 0):
        out.append(f"--relearn-lr must be a positive number, got {cfg.relearn_lr}")
    if cfg.relearn_samples < 0:
        out.append(f"--relearn-samples must be >= 0, got {cfg.relearn_samples}")
    return out


def result_from_dict(payload: Mapping[str, Any]) -> AttackResult:
    """An ``AttackResult`` from its ``as_dict`` form (the split stays plain data)."""
    return AttackResult(
        payload["attack"],
        list(payload["before"]),
        list(payload["after"]),
        payload.get("split"),
        dict(payload.get("info", {})),
    )


# ------------------------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class AttackSettings:
    """What every attacked model of a run shares, which is also the identity its results are kept under: the
    template, the relearning lr / epochs / batch size, the answer budget, the evaluation batch and the samples of
    the relearning attack's any-of-N leak."""

    template: str
    lr: float
    epochs: int
    batch_size: int
    max_new_tokens: int
    eval_batch_size: int
    num_samples: int


class Attacker:
    """Runs the attacks of one run on the models it is given and stores their results per cell.

    ``labels``: the attack labels (``AttackConfig.labels``); ``common``: what every attacked model shares, also the
    identity under which results are kept (``identity``). ``dose``: the relearning dose–response run on every
    attacked model (None: off), with ``dose_samples`` sampled answers per item; ``nf4``: measure the NF4 bins of
    every unlearned model against ``original``, the pair's original model (skipped without it). Their settings
    join the identity."""

    def __init__(
        self,
        labels: Sequence[str],
        forget_records: Sequence[dict],
        tokenizer,
        common: AttackSettings,
        num_threads: int | None = None,
        *,
        dose: RelearnDose | None = None,
        dose_samples: int = 0,
        nf4: bool = False,
        original=None,
    ) -> None:
        self.labels = list(labels)
        self.records = list(forget_records)
        self.tokenizer = tokenizer
        self.num_threads = num_threads
        self.common = common
        self.dose, self.dose_samples = dose, dose_samples
        self.nf4, self.original = nf4, original

    def identity(self, setting: str, level: float | None = None) -> dict:
        """What a stored result must have been computed under to be kept."""
        out = {
            "attacks": self.labels,
            "setting": setting,
            **dataclasses.asdict(self.common),
            "any_of_n": "relearn only",
        }
        if self.dose is not None:
            d = self.dose
            out["relearn_dose"] = {
                "lr": d.lr,
                "lr_schedule": "constant",
                "steps": list(d.schedule),
                "batch_size": d.batch_size,
                "weight_decay": d.weight_decay,
                "max_length": d.max_length,
                "samples": self.dose_samples,
            }
        if self.nf4:
            out["nf4_bins"] = {"blocksize": NF4_BLOCKSIZE}
        return out | ({"level": round(float(level), 10)} if level is not None else {})

    def path(self, store: RunDir, label: str, seed: int, pair: int, setting: str):
        return store.method_dir(label, seed, pair) / f"attacks_{setting}.json"

    def done(self, store: RunDir, label: str, seed: int, pair: int, setting: str, level: float | None = None) -> bool:
        path = self.path(store, label, seed, pair, setting)
        if not path.is_file():
            return False
        try:
            return read_json(path).get("identity") == self.identity(setting, level)
        except (OSError, ValueError):
            return False

    def attack(
        self,
        store: RunDir,
        label: str,
        seed: int,
        pair: int,
        setting: str,
        model,
        *,
        step: int | None,
        level: float | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> dict:
        """Every attack on ``model`` (a method's model after ``step`` steps, or a reference), saved to
        ``attacks_<setting>.json``, with the dose–response and the NF4 bins where they are on (``measures``); the
        relearning split, the dose's batches and the sampled answers are drawn from ``seed``, so the references of
        the same seed are attacked on the same items. ``model`` is not changed. The payload keeps the attacks' wall
        time (``timing``), which a resumed run reports as recorded."""
        began = time.perf_counter()
        if announce:
            where = f" pair {pair}" if pair else ""
            announce(f"{label} seed {seed}{where}: attacks at {setting} ({', '.join(self.labels)})")
        with part(f"attacks: {label}"):
            results, skipped = self._run(label, seed, model)
        seconds = {f"attacks: {label}": round(time.perf_counter() - began, 3)}
        measures = self.measures(label, seed, model, seconds)
        payload = {
            "identity": self.identity(setting, level),
            "method": label,
            "seed": seed,
            "pair_seed": pair,
            "setting": setting,
            "step": step,
            "skipped": skipped,
            "results": {a: by_model[label].as_dict() for a, by_model in results.items()},
            **measures,
            "timing": seconds,
        }
        write_json(self.path(store, label, seed, pair, setting), payload)
        return payload

    def measures(self, label: str, seed: int, model, seconds: dict[str, float]) -> dict[str, Any]:
        """{"relearn_dose": the dose–response of ``model`` (``DoseResponse.as_dict``; every model, the references
        included), "nf4_bins": its ``nf4_bin_table`` against the pair's original model (unlearned models only)},
        each where it is on; the wall time of each goes to ``seconds`` (parts ``relearn dose: <label>``, ``nf4
        bins: <label>``)."""
        out: dict[str, Any] = {}
        if self.dose is not None:
            c, began = self.common, time.perf_counter()
            decoding = attacks.Decoding(c.max_new_tokens, c.eval_batch_size, num_samples=self.dose_samples)
            with part(f"relearn dose: {label}"):
                found = relearn_dose(
                    model, self.tokenizer, self.records, self.dose, template=c.template, seed=seed, decoding=decoding
                )
            out["relearn_dose"] = found.as_dict()
            seconds[f"relearn dose: {label}"] = round(time.perf_counter() - began, 3)
        if self.nf4 and self.original is not None and label not in REFERENCE_LABELS:
            began = time.perf_counter()
            with part(f"nf4 bins: {label}"):
                out["nf4_bins"] = nf4_bin_table(self.original, model)
            seconds[f"nf4 bins: {label}"] = round(time.perf_counter() - began, 3)
        return out

    def _run(self, label: str, seed: int, model) -> tuple[dict, dict]:
        """({attack: {label: AttackResult}} in ``labels`` order, {attack: why it was skipped})."""
        results, skipped, c = {}, {}, self.common
        # the any-of-N leak (sampled answers, the costly part of an evaluation) is scored for relearning only: the
        # other attacks are read on the greedy answer, the measure of the recovery gap
        for group, samples in ((["relearn"], self.common.num_samples), ([a for a in self.labels if a != "relearn"], 0)):
            wanted = [a for a in group if a in self.labels]
            if not wanted:
                continue
            found, why = attacks.run_attacks(
                {label: model},
                self.tokenizer,
                self.records,
                wanted,
                template=c.template,
                seed=seed,
                relearning=attacks.Relearning(c.lr, c.epochs, c.batch_size, num_threads=self.num_threads),
                decoding=attacks.Decoding(c.max_new_tokens, c.eval_batch_size, num_samples=samples),
            )
            results |= found
            skipped |= why
        return {a: results[a] for a in self.labels if a in results}, skipped


def make_attacker(
    labels: Sequence[str],
    cfg: AttackConfig,
    evaluator: Evaluator,
    models: ModelConfig,
    batch_size: int,
    original=None,
) -> Attacker | None:
    """The attacker of one model pair (None with ``--attacks none``), reading what it shares with the evaluation
    from ``evaluator``. Relearning trains at ``--attack-lr``, by default the learning rate and batch size the model
    pair was fine-tuned with (a given checkpoint: TOFU's 1e-5 and the unlearning ``batch_size``); the dose–response
    at ``--relearn-lr``, by default that lr ÷ 10, with the same batch size. ``original``: the pair's original model,
    the reference of the NF4 bins."""
    if not labels:
        return None
    if models.model:
        lr = PAPER_TOFU_LR
    else:
        train_cfg = pair_training.resolve_preset(models.model_preset)[1]
        lr, batch_size = train_cfg.lr, train_cfg.batch_size
    splits = evaluator.data
    common = AttackSettings(
        template=splits.template,
        lr=cfg.attack_lr or lr,
        epochs=cfg.attack_epochs,
        batch_size=batch_size,
        max_new_tokens=evaluator.max_new_tokens,
        eval_batch_size=evaluator.cfg.eval_batch_size,
        num_samples=evaluator.cfg.leak_samples if splits.has_facts else 0,
    )
    return Attacker(
        labels,
        splits.forget_train,
        evaluator.tokenizer,
        common,
        num_threads=models.threads,
        dose=cfg.dose(common.lr, common.batch_size, models.threads),
        dose_samples=cfg.relearn_samples,
        nf4=cfg.nf4_bins(),
        original=original if cfg.nf4_bins() else None,  # held for the run's replayed attacks too: only when used
    )


def attack_references(
    store: RunDir,
    attacker: Attacker,
    labels: Sequence[str],
    seeds: Sequence[int],
    pair: int,
    references: dict,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Attack the reference models (``references``: {"original": model, "retrain": model or None}) once per
    unlearning seed (the relearning split and the samples are the seed's), unless their results under these
    settings are kept."""
    for seed in seeds:
        for name, model in references.items():
            if name in labels and model is not None and not attacker.done(store, name, seed, pair, "end"):
                attacker.attack(store, name, seed, pair, "end", model.eval(), step=None, announce=announce)


def attack_missing(
    store: RunDir,
    attackers: Mapping[int, Attacker],
    finished: Iterable[tuple],
    settings: Sequence[str],
    level: float,
    replay: Callable[[tuple, int], Any],
    announce: Callable[[str], None] | None = None,
) -> None:
    """The attacks not yet run on the ``finished`` jobs ((label, method, seed, pair), each with its result): at the
    end of training where the model is gone (a resumed run), and at matched forgetting (``level``, the run's
    target-drop level, known once every method has finished; a job that never reaches it has no matched model).
    ``replay(job, step)`` rebuilds the job's model after ``step`` steps by its deterministic unlearning run;
    ``attackers``: the attacker of each model pair."""
    for job in finished:
        label, _, seed, pair = job
        result = store.load_result(label, seed, pair)
        for setting in settings:
            step, at = result["steps"], None
            if setting == "matched":
                step = matched_step(result, level) if math.isfinite(level) and level > 0 else None
                if step is None:
                    continue
                at = level
            if not attackers[pair].done(store, label, seed, pair, setting, at):
                if announce:
                    announce(f"{cell_name(label, seed, pair)}: replaying the unlearning run to step {step} ({setting})")
                model = replay(job, step)
                attackers[pair].attack(store, label, seed, pair, setting, model, step=step, level=at, announce=announce)


def matched_step(result: dict, level: float) -> int | None:
    """The optimiser step of the first evaluation at which a result's curve reaches the target-drop ``level``
    (the model the matched attack replays to), or None when it never does."""
    curve = result.get("curve") or []
    found = crossing(curve, "target_drop", level)
    return None if found is None else int(curve[found[1]]["step"])


def load_cells(
    store: RunDir, labels: Iterable[str], seeds: Iterable[int], pairs: Iterable[int], settings: Iterable[str]
) -> dict[tuple, AttackResult]:
    """{(method, seed, pair, attack, setting): AttackResult} of every stored attack of these cells (references
    at ``end`` only)."""
    cells = {}
    for label in labels:
        for pair in pairs:
            for seed in seeds:
                for setting in settings:
                    if label in REFERENCE_LABELS and setting != "end":
                        continue
                    path = store.method_dir(label, seed, pair) / f"attacks_{setting}.json"
                    if not path.is_file():
                        continue
                    for attack, payload in read_json(path)["results"].items():
                        cells[(label, seed, pair, attack, setting)] = result_from_dict(payload)
    return cells


# ------------------------------------------------------------------------------------------------ report
@timed("report")
def recovery_report(
    cells: Mapping[tuple, AttackResult],
    labels: Sequence[str],
    ctx: Context,
    *,
    measure: str = RECOVERY_MEASURE,
    informative: Mapping[tuple[str, str], bool | None] | None = None,
) -> dict[str, Any]:
    """What the report writes about the attacks: ``rows`` (recovery.csv: per run, then one ``mean`` row per
    method × attack × setting with the two-level interval of the spurious gap), ``verdicts`` (verdict.csv rows,
    measure ``spurious_gap[<attack>]``, setting ``end`` or ``matched:target_drop``) and ``lines`` (table.md: per
    setting a table of methods × attacks, then the paired verdicts of the spurious gap) and ``measure``.
    ``informative``: {(attack, setting): whether the original model leaks under it}
    (``bs_ref.protocol.instruments.informative_attacks``); an attack marked False is flagged in every row and
    table cell and gives no verdict rows (docs/theory.md §18)."""
    informative = dict(informative or {})
    rows = recovery_table.recovery_rows(cells, measure=measure)
    for row in rows:
        row["informative"] = informative.get((row["attack"], row["setting"]))
    methods = [m for m in labels if any(k[0] == m for k in cells)]
    what = measure.replace("_", " ")
    lines = [
        "## Recovery attacks: does the forgetting survive?",
        "",
        f"Each cell: the {what} of the attacked items before → after the attack (relearning: the held-out half "
        "of each forget author's items), then the **spurious gap** = after − the retain model's after under the "
        "same attack, ≈ 0 for real forgetting (docs/theory.md §9). Means over runs; the gap with its 95 % "
        "interval (items within runs, runs across seeds and model pairs). recovery.csv holds every run and "
        "the recovered amount (after − before).",
        "",
    ]
    verdicts = []
    for setting in dict.fromkeys(k[4] for k in cells):
        names = list(dict.fromkeys(k[3] for k in cells if k[4] == setting))
        title = "end of training" if setting == "end" else "at matched target drop (replayed models)"
        lines += [
            f"### Attacked at the {title}" if setting == "end" else f"### Attacked {title}",
            "",
            "| method | n | " + " | ".join(names) + " |",
            "|---|---:|" + "---|" * len(names),
        ]
        for method in methods:
            texts, n = [], 0
            for attack in names:
                runs = _runs(cells, method, attack, setting, measure)
                if runs is None:
                    texts.append("–")
                    continue
                n = max(n, len(runs["after"]))
                row = _mean_row(rows, runs, method, attack, setting, measure, ctx)
                row["informative"] = informative.get((attack, setting))
                rows.append(row)
                gap = stats.format_interval(row["spurious_gap"], row["ci_low"], row["ci_high"])
                flag = " (*uninformative*)" if row["informative"] is False else ""
                texts.append(
                    f"{stats.format_number(row['before'])} → {stats.format_number(row['after'])}; gap {gap}{flag}"
                )
            if n:
                lines.append(f"| {method} | {n} | " + " | ".join(texts) + " |")
        lines.append("")
        useful = [attack for attack in names if informative.get((attack, setting)) is not False]
        if len(useful) < len(names):
            lines += [
                f"Uninformative (the original model leaks no item under them, so they cannot show recovery; no "
                f"verdict rows): {', '.join(a for a in names if a not in useful)}.",
                "",
            ]
        found = [v for attack in useful for v in _verdicts(cells, methods, attack, setting, measure, ctx)]
        verdicts += found
        if found:
            lines += _verdict_lines(found, names)
    return {"rows": rows, "verdicts": verdicts, "lines": lines, "measure": measure}


def _mean_row(rows, runs, method: str, attack: str, setting: str, measure: str, ctx: Context) -> dict:
    """The ``mean`` row of a method × attack × setting: means over its runs, the spurious gap's interval."""
    mine = [r for r in rows if r["method"] == method and r["attack"] == attack and r["setting"] == setting]
    row = {
        "method": method,
        "seed": "mean",
        "pair_seed": "",
        "attack": attack,
        "setting": setting,
        "measure": measure,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "spurious_gap": math.nan,
    }
    for column in (
        "fact_leak_before",
        "fact_leak_after",
        "target_logprob_before",
        "target_logprob_after",
        "recovered",
        "spurious_gap",
    ):
        row[column] = _mean([r[column] for r in mine])
    gap = _interval(runs["spurious_gap"], ctx)
    if gap is not None:
        row.update(spurious_gap=gap.value, ci_low=gap.ci_low, ci_high=gap.ci_high)
    row["before"] = _mean([float(np.nanmean(v)) for v in runs["before"].values()])
    row["after"] = _mean([float(np.nanmean(v)) for v in runs["after"].values()])
    return row


def _runs(cells, method: str, attack: str, setting: str, measure: str) -> dict[str, dict] | None:
    out: dict[str, dict] = {}
    for which in ("before", "after", "recovered", "spurious_gap"):
        try:
            runs = recovery_table.recovery_runs(cells, method, attack, setting, which=which, measure=measure)
        except ValueError:
            return None
        out[which] = {k: v for k, v in runs.items() if np.isfinite(v).any()}
    return out


def _interval(runs: Mapping[tuple, np.ndarray], ctx: Context) -> stats.Interval | None:
    if not runs:
        return None
    return stats.interval(dict(runs), n_resamples=ctx.n_resamples, seed=ctx.seed, design=design_of(runs))


def _verdicts(cells, methods, attack: str, setting: str, measure: str, ctx: Context) -> list[dict]:
    out = []
    setting_cell = "end" if setting == "end" else "matched:target_drop"
    for a, b in comparisons(methods, ctx):
        try:
            ra = recovery_table.recovery_runs(cells, a, attack, setting, measure=measure)
            rb = recovery_table.recovery_runs(cells, b, attack, setting, measure=measure)
        except ValueError:
            continue
        shared = [k for k in ra if k in rb and np.isfinite(ra[k]).any() and np.isfinite(rb[k]).any()]
        if not shared:
            continue
        result = stats.compare(
            {k: ra[k] for k in shared},
            {k: rb[k] for k in shared},
            higher_is_better=False,
            n_resamples=ctx.n_resamples,
            seed=ctx.seed,
            design=design_of(shared),
        )
        out.append(stats.verdict_row(stats.comparison_label(a, b), f"spurious_gap[{attack}]", setting_cell, result))
    return out


def _verdict_lines(verdicts: Sequence[dict], names: Sequence[str]) -> list[str]:
    lines = [
        "Spurious gap, paired comparisons at 95 %: A − B by item and run; **better** = a smaller gap (less "
        "of the fact comes back than in the retain model), *no diff.*: the interval contains 0.",
        "",
        "| A − B | n | " + " | ".join(names) + " |",
        "|---|---:|" + "---|" * len(names),
    ]
    for comparison in dict.fromkeys(v["comparison"] for v in verdicts):
        texts, n = [], 0
        for attack in names:
            measure = f"spurious_gap[{attack}]"
            v = next((x for x in verdicts if x["comparison"] == comparison and x["measure"] == measure), None)
            if v is None:
                texts.append("–")
                continue
            n = max(n, v["n_seeds"])
            word = VERDICT_WORDS.get(v["verdict"], v["verdict"])
            texts.append(f"{word} {stats.format_interval(v['difference'], v['ci_low'], v['ci_high'])}")
        lines.append(f"| {comparison} | {n} | " + " | ".join(texts) + " |")
    return [*lines, ""]


def _mean(values: Sequence[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan

"""What the experiment's loop calls around its jobs: the model pairs, the jobs still to run, the attacks that need a
model replayed, and the report.

``experiments/tofu.py`` holds the loop (for each model pair, every unfinished job, a method and a seed; each job
unlearn → evaluate → attack) and one ``Run`` per run, which holds what the jobs read (the settings, the run
directory, the data, the attacks) and gathers what the report needs on the way:

- ``Run.open_pair``: load a model pair, record it in config.json, evaluate its references once per run directory
  (``bs_ref.protocol.evaluate.references``) and attack them (``bs_ref.protocol.recovery``); a job outside the
  driver (a worker process, a Ray task) opens its pair from the model cache and the files the driver wrote
  (``Run.pair_context``);
- ``Run.pending_jobs`` and ``Run.run_jobs``: the jobs still to run, run where ``--executor`` says
  (``bs_ref.protocol.executor``); a job that stops on a NaN/inf loss is one line, every other result is kept;
- ``Run.attack_missing``: the attacks at matched forgetting, and those on finished methods whose model is gone (a
  resumed run), each model rebuilt by replaying its deterministic unlearning run (``Run.replay``);
- ``Run.report``: summary.csv, matched.csv, verdict.csv, recovery.csv, table.md, the plots, the instruments' CSVs
  and the ablations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accelerate import Accelerator

from bs_ref import timing
from bs_ref.attacks import replay_unlearning
from bs_ref.protocol import ablations, evaluate, fair, instruments, matched, recovery
from bs_ref.protocol import pairs as model_pairs
from bs_ref.protocol.data import Data
from bs_ref.protocol.endpoints import StopAtLevel
from bs_ref.protocol.recovery import Attacker
from bs_ref.protocol.report import RunInfo, describe, write_report
from bs_ref.protocol.store import RunDir, cell_name, versions, write_json, write_text
from bs_ref.protocol.uncertainty import Context
from bs_ref.unlearn import NonFiniteLossError, UnlearnConfig

Job = tuple
"""One unlearning job: (method label, method declaration, unlearning seed, model-pair seed)."""


@dataclass
class PairContext:
    """What every job of one model pair uses: the original model, the tokenizer, the evaluator (with the pair's
    belief bands), the step-0 point, the attacker (None without attacks) and the declared stopping rule (None
    without ``--stop-at-fraction``; docs/theory.md §20)."""

    original: Any
    tokenizer: Any
    evaluator: evaluate.Evaluator
    start: dict
    attacker: Attacker | None
    stop: StopAtLevel | None = None


@dataclass
class Run:
    """One run of the experiment. ``args``: its arguments (``TofuArgs``); ``plan``: its methods, [(label,
    declaration; None for a reference)]; ``command``: the command line; ``settings``: every command-line setting,
    {flag name: value}; ``announce``: where progress lines go. The other fields are what the driver gathers on the
    way; ``labels``, ``seeds``, ``pairs``, ``attack_labels``, ``attack_notes`` and ``config`` (config.json) are read
    off the arguments."""

    args: Any
    store: RunDir
    splits: Data
    plan: list[tuple[str, Any]]
    command: str
    settings: dict[str, Any]
    announce: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    retain_forget: dict[int, list | None] = field(default_factory=dict)
    attackers: dict[int, Attacker | None] = field(default_factory=dict)
    models: dict[int, dict] = field(default_factory=dict)
    replaying: dict[int, tuple] = field(default_factory=dict)
    """{pair: (original model, tokenizer)} of the pair whose models are being replayed."""

    def __post_init__(self) -> None:
        self.labels = [label for label, _ in self.plan]
        self.seeds, self.pairs = self.args.seeds, self.args.pair_seeds
        self.attack_labels, self.attack_notes = self.args.attacks.labels()
        attacks = {"run": self.attack_labels, "at": self.args.attacks.settings() if self.attack_labels else []}
        models = self.args.models
        self.config = {  # config.json; each model pair adds what it is and the metric conventions (open_pair)
            "identity": self.store.identity,
            "command": self.command,
            "preset": self.args.preset,
            "methods": self.labels,
            "seeds": self.seeds,
            "pair_seeds": self.pairs,
            "device": models.device_name,
            "precision": models.precision_name,
            "mixed_precision": models.mixed_precision,
            "versions": versions(),
            "data": self.splits.info,
            "attacks": attacks | {"skipped": self.attack_notes},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        note = model_pairs.precision_note(models)
        if note is not None:
            self.announce(note)

    def __getstate__(self) -> dict:  # a job outside the driver gets the run without the driver's models
        return self.__dict__ | {"attackers": {}, "replaying": {}}

    # ---- model pairs
    def open_pair(self, pair: int) -> PairContext:
        """Model pair ``pair`` in the driver: loaded (trained on first use), recorded in config.json, its reference
        models evaluated once per run directory and attacked."""
        args, store = self.args, self.store
        with timing.part("pair"):
            original, retain, tokenizer, info = model_pairs.load_models(
                args.models, self.splits, args.progress, self.announce, pair_seed=pair
            )
        store.bind_models(pair, info)  # a resume never mixes model pairs
        evaluator = evaluate.Evaluator(args.evaluation, self.splits, tokenizer)
        self.models[pair] = info
        conventions = evaluate.conventions(self.settings, evaluator.max_new_tokens)
        self.config |= {"models": self.models[self.pairs[0]], "conventions": conventions}
        if len(self.pairs) > 1:
            self.config["models_by_pair_seed"] = dict(self.models)
        write_json(store.path("config.json"), self.config)
        start, note = self._references(pair, evaluator, original, retain, want_retrain="retrain" in self.labels)
        if note and note not in self.notes:
            self.notes.append(note)
        stop = self._stop_rule(evaluator, start, pair)
        write_json(store.path("config.json"), self.config | {"forget_quality_note": note})
        attacker = self.attackers[pair] = self._attacker(evaluator, original)
        if attacker is not None:
            references = {"original": original, "retrain": retain}
            recovery.attack_references(store, attacker, self.labels, self.seeds, pair, references, self.announce)
        return PairContext(original, tokenizer, evaluator, start, attacker, stop)

    def pair_context(self, pair: int) -> PairContext:
        """Model pair ``pair`` for a job outside the driver (a Ray task, a worker process's first job of the pair):
        the pair from the model cache and its reference files, which the driver wrote before any job started."""
        original, retain, tokenizer, info = model_pairs.load_models(
            self.args.models, self.splits, False, self.announce, pair_seed=pair
        )
        self.store.bind_models(pair, info)
        evaluator = evaluate.Evaluator(self.args.evaluation, self.splits, tokenizer)
        start, _ = self._references(pair, evaluator, original, retain, want_retrain=False)
        attacker, stop = self._attacker(evaluator, original), self._stop_rule(evaluator, start, pair)
        return PairContext(original, tokenizer, evaluator, start, attacker, stop)

    def _references(self, pair: int, evaluator, original, retain, want_retrain: bool) -> tuple[dict, str | None]:
        models = self.args.models
        start, note = evaluate.references(
            self.store,
            evaluator,
            original,
            retain,
            models.retain_logs,
            models.device_name,
            want_retrain=want_retrain,
            announce=self.announce,
            pair=pair,
        )
        self.retain_forget[pair] = evaluator.retain_forget_items
        return start, note

    def _stop_rule(self, evaluator: evaluate.Evaluator, start: dict, pair: int) -> StopAtLevel | None:
        """The pair's declared stopping rule (``fair.stop_rule``), recorded in config.json's ``stopping``."""
        args = self.args
        budget = fair.budget(args.unlearn, len(self.splits.forget_train))
        retain = evaluator.retain_target_logprob()
        rule = fair.stop_rule(args.stop_at_fraction, start["target_logprob"], retain, budget)
        if rule is not None:
            stopping = self.config.setdefault("stopping", {"lr_rule": "one lr for every method (--lr)"})
            stopping[f"pair{pair}"] = rule.to_dict() | {"measure": fair.STOP_MEASURE}
        return rule

    def _attacker(self, evaluator: evaluate.Evaluator, original) -> Attacker | None:
        args = self.args
        batch_size = args.unlearn.batch_size
        return recovery.make_attacker(self.attack_labels, args.attacks, evaluator, args.models, batch_size, original)

    # ---- jobs
    def pending_jobs(self, pair: int) -> list[Job]:
        """Every unfinished unlearning job of model pair ``pair``, in run order (a finished one is said kept)."""
        jobs = []
        for seed in self.seeds:
            for label, method in self.plan:
                if method is None:
                    continue
                if self.store.is_finished(label, seed, pair):
                    where = self.store.result_path(label, seed, pair)
                    self.announce(f"{cell_name(label, seed, pair)}: finished result kept ({where})")
                else:
                    jobs.append((label, method, seed, pair))
        return jobs

    def run_jobs(self, job: Callable[[Run, dict, Job], None], jobs: list[Job], contexts: dict[int, PairContext]):
        """``job(self, contexts, j)`` for every job ``j``, where ``--executor`` says; a job that stopped on a NaN/inf
        loss adds one line to ``diverged`` (every other result is written by its job). ``contexts``: the model
        pairs already open here ({} for workers, which open their own)."""

        def done(j: Job, outcome) -> None:
            if isinstance(outcome, NonFiniteLossError):  # one line; every finished result is kept
                self.diverged.append(f"{job_name(j)}: {outcome}")
                self.announce(f"{job_name(j)} stopped (lower --lr; every finished result is kept): {outcome}")

        gpus = 1 if self.args.models.device_name == "cuda" else 0
        self.args.execution.run(
            jobs,
            functools.partial(job, self, contexts),
            cpus_per_job=self.args.models.threads,
            gpus_per_job=gpus,
            catch=(NonFiniteLossError,),
            on_done=done,
            describe=job_name,
        )

    def unlearn_config(self, label: str, method, seed: int, pair: int) -> UnlearnConfig:
        """The unlearning config of one job (the same for the run and for its replays)."""
        return dataclasses.replace(
            self.args.unlearn,
            method=method,
            seed=seed,
            template=self.splits.template,
            progress=self.args.progress,
            eval_at_start=False,  # the step-0 point is the original model's, computed once for every method
            log_path=str(self.store.method_dir(label, seed, pair) / "train_log.jsonl"),
            mixed_precision=self.args.models.mixed_precision,
            extra={"label": label},
        )

    def accelerator(self, cfg: UnlearnConfig) -> Accelerator:
        """The ``accelerate`` setup of an unlearning run: the run's device and precision."""
        return Accelerator(cpu=self.args.models.device_name == "cpu", mixed_precision=cfg.mixed_precision)

    # ---- replayed attacks
    def attack_missing(self) -> None:
        """The attacks not yet run (``recovery.attack_missing``): at matched forgetting (the run's target-drop level,
        known once every method has finished) and at the end of finished methods whose model is gone."""
        if not self.attack_labels:
            return
        given = matched.given_levels(self.args.match_target_drop, self.args.match_fact_leak)
        results = self.store.results(self.labels, self.seeds, self.pairs)
        level = matched.matched_rows(results, self.seeds, given)[1].get("target_drop", math.nan)
        finished = [
            (label, method, seed, pair)
            for pair in self.pairs
            for label, method in self.plan
            for seed in self.seeds
            if method is not None and self.store.is_finished(label, seed, pair)
        ]
        settings = self.args.attacks.settings()
        recovery.attack_missing(self.store, self.attackers, finished, settings, level, self.replay, self.announce)

    def replay(self, job: Job, step: int):
        """The model of ``job`` after ``step`` steps, its unlearning run replayed from the pair's original model (a
        pair is loaded when the first of its models is replayed, and kept until another pair's is)."""
        label, method, seed, pair = job
        if pair not in self.replaying:
            original, _, tokenizer, info = model_pairs.load_models(
                self.args.models, self.splits, self.args.progress, self.announce, pair_seed=pair
            )
            self.store.bind_models(pair, info)
            self.replaying = {pair: (original, tokenizer)}
        original, tokenizer = self.replaying[pair]
        cfg = self.unlearn_config(label, method, seed, pair)
        forget, retain = self.splits.forget_train, self.splits.retain_train
        with timing.part("replays"):
            models = replay_unlearning(
                original, tokenizer, forget, retain, cfg, [step], accelerator=self.accelerator(cfg)
            )
        return models[step]

    # ---- report
    def report(self) -> dict:
        """summary.csv, matched.csv, verdict.csv, table.md and the plots (``report.write_report``), with the attacks'
        part (recovery.csv), the instruments (leak@k, the squeeze after the fork, annotated facts, conditional
        recovery: docs/theory.md §15-§18) and the ablations; returns what ``write_report`` wrote."""
        args, store, splits = self.args, self.store, self.splits
        labels, seeds, pairs = self.labels, self.seeds, self.pairs
        given = matched.given_levels(args.match_target_drop, args.match_fact_leak)
        results = store.results(labels, seeds, pairs)
        cells, informative, attacks, facts = None, None, None, instruments.run_facts(splits)
        if self.attack_labels:
            cells = recovery.load_cells(store, labels, seeds, pairs, args.attacks.settings())
            informative = instruments.informative_attacks(cells, facts)
            measure = "fact_leak" if splits.has_facts else "target_logprob"
            ctx = Context(methods=dict(self.plan), pair_seeds=pairs)
            attacks = recovery.recovery_report(cells, labels, ctx, measure=measure, informative=informative)
        settings = describe(splits.info, self.settings, seeds, pairs)
        info = RunInfo(
            self.command, settings, splits.has_facts, given, [*self.notes, *self.attack_notes], self.diverged
        )
        evaluation = args.evaluation
        ctx = Context(
            evaluation.convention,
            evaluation.fluency_classifier,
            self.retain_forget,
            methods=dict(self.plan),
            pair_seeds=pairs,
        )
        report = write_report(store, results, seeds, info, ctx, attacks)
        found = instruments.write_instruments(store, labels, seeds, pairs, facts, cells, informative)
        lines = [*found["lines"]]
        if args.ablation:
            lines += ablations.write_ablations(args.ablation, report["rows"], results, store.root, settings=args.hyper)
        report["table"] = "\n".join([report["table"], *lines])
        if args.stop_at_fraction is not None:  # the fair tier: its section opens table.md (docs/theory.md §20)
            report["fair"] = fair.write_fair(store, labels, seeds, pairs, report["verdicts"])
            head, _, rest = report["table"].partition("\n")
            report["table"] = "\n".join([head, "", *report["fair"]["lines"], rest])
        write_text(store.path("table.md"), report["table"])
        return report


def job_name(job: Job) -> str:
    """``ga seed 0``, ``ga seed 0 pair 1``: how progress lines and errors name a job."""
    return cell_name(job[0], job[2], job[3])

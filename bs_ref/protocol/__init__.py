"""The experiment protocol: everything an unlearning experiment does besides choosing its settings.

``experiments/tofu.py`` reads top to bottom (arguments, then for each model pair, for each job: unlearn →
evaluate → attack, then the report); the parts it calls live here, one job per module:

- ``cli``: the command line built from dataclasses (the experiment's own, the library's configs, the methods'
  run-wide hyper-parameters), presets, method specs and labels, the run's identity (the settings not marked
  ``identity=False``), and one message for every argument problem;
- ``data``: the data source and its splits (``DataConfig``, ``load_data``);
- ``pairs``: the original model and its retain twin, and the device (``ModelConfig``, ``load_models``), trained
  and cached by ``pair_training``;
- ``evaluate``: full and light evaluations, belief bands, the reference models (``EvalConfig``, ``Evaluator``),
  sharded over processes by ``distributed``;
- ``store``: the run directory — atomic writes, resume, the identity check, provenance (``RunDir``);
- ``stats``: intervals, paired comparisons and verdicts; ``endpoints``: the primary endpoints (Holm, TOST);
- ``tables``: summary rows, per-method statistics, CSV and Markdown tables;
- ``matched``: comparing methods at matched forgetting, read off their curves;
- ``uncertainty``: the 95 % interval of every reported number and the paired verdicts, from the per-item
  values a run stores (runs are (unlearning seed, model-pair seed) cells);
- ``plots``: the figures (matplotlib, optional);
- ``recovery``: the recovery attacks on every model of a run (``AttackConfig``, ``Attacker``, which models are
  attacked when; docs/theory.md §9) and their part of the report; ``recovery_table``: the recovery gaps;
- ``instruments``: leak@k, the squeeze after the fork, annotated facts, conditional recovery (§15–§18), and the
  relearning dose–response and NF4 bins the attacks record (relearn_dose.csv, nf4_bins.csv; §9);
- ``ablations``: the refresh and sensitivity ablations (``--ablation``; docs/theory.md §13);
- ``executor``: the jobs of a run in this process, in worker processes or on Ray (``--executor``);
- ``report``: summary.csv, matched.csv, verdict.csv, recovery.csv, table.md and the plots of a run;
- ``driver``: what the experiment's loop calls around its jobs (``Run``: open a model pair, the jobs still to
  run, the attacks that need a replayed model, the report).

Imports run one way, with no circle: ``cli``, ``store`` and
``stats`` at the bottom, ``driver`` at the top. The package uses ``bs_ref.data``, ``bs_ref.models``,
``bs_ref.metrics``, ``bs_ref.methods``, ``bs_ref.unlearn``, ``bs_ref.attacks`` and ``bs_ref.files``; nothing else
in ``bs_ref`` imports it, and it imports nothing from ``experiments``.
"""

"""The experiment protocol: everything an unlearning experiment does besides choosing its settings.

``experiments/tofu.py`` reads top to bottom (arguments → data → models → for seed, for method: unlearn →
evaluate → report); the parts it calls live here, one job per module:

- ``cli``: the command line built from dataclasses (the experiment's own, the library's configs, the methods'
  run-wide hyper-parameters), presets, method specs and labels, and one message for every argument problem;
- ``data``: the data source and its splits (``DataConfig``, ``load_data``);
- ``models``: the original model and its retain twin, and the device (``ModelConfig``, ``load_models``);
- ``evaluate``: full and light evaluations, belief bands, the reference models (``EvalConfig``, ``Evaluator``);
- ``store``: the run directory — atomic writes, resume, the identity check, provenance (``RunDir``);
- ``tables``: summary rows, per-method statistics, CSV and Markdown tables;
- ``matched``: comparing methods at matched forgetting, read off their curves;
- ``uncertainty``: the 95 % interval of every reported number and the paired verdicts, from the per-item
  values a run stores (``bs_ref.stats``; runs are (unlearning seed, model-pair seed) cells);
- ``plots``: the figures (matplotlib, optional);
- ``recovery``: the recovery attacks on every model of a run (``AttackConfig``, ``Attacker``; docs/theory.md §9)
  and their part of the report (recovery.csv, spurious-gap verdicts);
- ``ablations``: the refresh and sensitivity ablations (``--ablation``; docs/theory.md §13);
- ``executor``: the jobs of a run in this process, in worker processes or on Ray (``--executor``);
- ``report``: summary.csv, matched.csv, verdict.csv, recovery.csv, table.md and the plots of a run.

Imports run one way, with no circle: ``cli`` ← ``data`` ← ``models``; ``store`` ← ``tables`` ← ``matched`` ←
``uncertainty``, ``plots`` ← ``report``; ``evaluate`` uses ``cli``, ``data``, ``matched`` and ``store``. The
package uses ``bs_ref.data``, ``bs_ref.models``, ``bs_ref.metrics``, ``bs_ref.methods``, ``bs_ref.stats`` and
``bs_ref.files`` (every file it reads back);
nothing else in ``bs_ref`` imports it, and it imports nothing from ``experiments``.
"""

"""Tools of the claims suite (``proofs_check``, tests/test_claims_*.py), not of the method or the experiment.

- ``dynamics``: one-step parameter and logit changes, the empirical NTK and the first-order checks of the ledger's
  learning-dynamics claims (docs/theory.md §5);
- ``cases``: the exactly enumerable toy sequence models and the SmolLM2 cases those claims run on;
- ``stepping``: multi-step squeeze traces over such a case (SEQ1, SEQ2).
"""

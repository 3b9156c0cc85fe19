"""Set-up or numerics? What to rule out before reading a logits comparison.

- `sides` / `preflight` / `fields`: the parity preflight, both sides' provenance side by side
  (torch-free; `bcanalyze`, `compare` and `logitsdump preflight` run it);
- `setup_verdicts`: compare's hook, the `setup-differs` verdict for the cases whose set-ups differ;
- `rerun` / `probe` / `ablation`: the repeat and batch probe and the configuration ablation of the
  flipped cases, through the runner (they load the model).
None of them judges numerics: compare does.
"""

"""lm-evaluation-harness interop: its `--log_samples` files as bcanalyze inputs and dump sources.

`samples` reads `samples_<task>_<date>.jsonl` (no torch), `badcases` joins two of them into our
bad-case CSV, `replay` re-infers the bad docs' logged prompts through our backend. See docs/lm-eval.md.
"""

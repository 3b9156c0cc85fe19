"""`logitsdump localize`: which layer and which module of the model under test is wrong, measured on each
module's *own* error.

A module's own error is what it gets wrong when it is fed golden's input: the golden side records every
candidate's input and output on one prefill of a case (`record`), the test side runs the same prefill
with each candidate fed golden's recorded input (`replay`), and each candidate's error is judged against
its band, the error of a healthy implementation in the test dtype on the same case (the control arm, run
on the golden side). A culprit is confirmed causally both ways (`judge`). Only files travel between the
two sides.

Modules: `candidates` (which modules, found by structure), `passes` (the hooked forward passes),
`compact` (the recorded tensors, stored once), `files` (the record and replay folders), `records` (the
per-case data), `bands` and `verdict` (pure judging), `heads` (per-head attribution), `cases` (which
cases, from compare's case JSON and the golden dump), `msprobe` (the op-level hand-off),
`run_record` / `run_replay` / `run_judge` (the three drivers), `outputs` (JSON and CSV), `command` (the
CLI subcommand). Nothing here is imported by compare or report; torch is imported only where a model runs.
"""

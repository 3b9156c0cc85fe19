"""`localize record`, the golden side: one prefill of each case recording every candidate's input and output,
and the control arms (golden's device running the isolated replay in the test dtype) that give the bands.

Modes: `stats` (default) stores what feeding and judging every candidate needs (golden's tensors, each once:
`compact`) and the control arms' per-token errors; `tensors` also records the op-level tensors (q/k/v/o and
MLP projections) of the layers named in `ops_at`, the top sites of an earlier run, which the replay then
measures one by one. The size of each case is printed before it is written.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError, UsageError
from logitsdump.fsutil import check_path_fits, ensure_writable_dir
from logitsdump.localize import files, models
from logitsdump.localize.cases import CaseSpec, select_cases
from logitsdump.localize.compact import compact
from logitsdump.localize.records import SCHEMA_VERSION, Arm, HeadStats, RecordCase

KEEP_MODES = ("stats", "tensors")
DEFAULT_TEST_DTYPE = "bf16"


@dataclass(frozen=True)
class RecordOptions:
    """What `localize record` is asked to do."""

    model_config_path: str
    output_dir: str
    compare_output: str | None = None
    golden_dump: str | None = None
    keys: tuple[str, ...] = ()
    step: int | None = None
    #: The control arms' dtypes (default: the test dtype compare's manifests name, else bf16).
    test_dtypes: tuple[str, ...] = ()
    #: The control arms' attention (default: golden's; the other one for an arm in golden's own dtype).
    control_attn: str | None = None
    keep: str = "stats"
    ops_at: tuple[int, ...] = ()
    device: str = "auto"


@dataclass(frozen=True)
class RecordSummary:
    path: Path
    cases: int
    bytes: int
    tokens: int
    layers: int

    @property
    def bytes_per_token_layer(self) -> float:
        return self.bytes / max(1, self.tokens * self.layers)


def record(options: RecordOptions, say: Callable[[str], None] = print) -> RecordSummary:
    """Record the cases (see the module docstring); the folder written."""
    if options.keep not in KEEP_MODES:
        raise UsageError(f"--keep {options.keep!r}: use one of {', '.join(KEEP_MODES)}")
    if options.keep == "tensors" and not options.ops_at:
        raise UsageError("--keep tensors records the ops of the top sites: name their layers with --layers (e.g. the "
                         "culprit layers of an earlier judge)")
    out = Path(options.output_dir)
    check_path_fits(out, "-o/--output-dir", "case_c0000.safetensors.tmp")
    if (out / files.RECORD_HEADER).exists():
        raise UsageError(f"{out} already holds a localize record: choose another -o (nothing was changed)")
    selection = select_cases(compare_output=options.compare_output, golden_dump=options.golden_dump,
                             keys=options.keys or None, step=options.step)
    ensure_writable_dir(out)
    models.refuse_unhookable(options.model_config_path, str(out), [c.focus_step for c in selection.cases])
    golden = models.load(options.model_config_path, device=options.device)
    from logitsdump.localize.candidates import find_structure

    structure = find_structure(golden.model, options.ops_at)
    if any(layer >= structure.layers or layer < 0 for layer in options.ops_at):
        raise UsageError(f"--layers {','.join(map(str, options.ops_at))}: the model has layers "
                         f"0..{structure.layers - 1}")
    golden_dtype = golden.config.data_type
    golden_attn = models.attention_of(golden.model)
    dtypes = options.test_dtypes or ((selection.test_dtype,) if selection.test_dtype else (DEFAULT_TEST_DTYPE,))
    controls = {}
    for dtype in dict.fromkeys(dtypes):
        attn = options.control_attn or (models.other_attention(golden_attn) if dtype == golden_dtype else golden_attn)
        say(f"control arm {dtype} ({attn} attention): loading {golden.model_path}")
        controls[dtype] = models.load(options.model_config_path, device=options.device, data_type=dtype, attn=attn)
        if dtype == golden_dtype and attn == golden_attn:
            say(f"  note: the {dtype} control arm runs golden's own configuration: its bands are the dtype's floor")
    say(f"recording {len(selection.cases)} case(s) of {golden.model_path} ({golden_dtype}, {golden_attn}) in "
        f"{options.keep} mode: {len(structure.candidates)} candidates, control arm(s) {', '.join(controls)}")
    total = tokens = 0
    ids: list[str] = []
    for number, spec in enumerate(selection.cases):
        case = files.case_id(number)
        entry, stored = _record_case(case, spec, golden.model, structure, controls)
        per = entry.stored_bytes / max(1, len(spec.token_ids) * structure.layers)
        say(f"case {number + 1}/{len(selection.cases)} {spec.label} (step {spec.focus_step}): {len(spec.token_ids)} "
            f"tokens, {entry.stored_bytes / 1e6:.1f} MB of golden tensors ({per / 1000:.1f} KB per token per layer) "
            f"-> {out / entry.tensors_file}")
        files.save_tensors(out / entry.tensors_file, stored)
        files.write_json(out / files.CASE_JSON.format(id=case), entry.to_dict())
        ids.append(case)
        total += entry.stored_bytes
        tokens += len(spec.token_ids)
    header = {
        "schema_version": SCHEMA_VERSION, "kind": "record", "tool": "logitsdump localize record",
        "record_id": secrets.token_hex(8),
        "model": {"path": str(golden.model_path), "name": golden.config.model_name, "dtype": golden_dtype,
                  "attn": golden_attn, "trust_remote_code": golden.config.trust_remote_code},
        "provenance": {"device": golden.device.torch_device, "versions": golden.versions()},
        "structure": structure.to_dict(), "keep": options.keep, "ops_at": list(options.ops_at),
        "controls": {k: {"dtype": k, "attn": models.attention_of(v.model)} for k, v in controls.items()},
        "golden_dump": str(selection.golden_dir), "compare_output": options.compare_output,
        "cases": ids, "bytes": total, "tokens": tokens,
    }
    files.write_json(out / files.RECORD_HEADER, header)
    summary = RecordSummary(out, len(ids), total, tokens, structure.layers)
    say(f"record: {out} ({len(ids)} case(s), {total / 1e6:.1f} MB, {summary.bytes_per_token_layer / 1000:.1f} KB per "
        "token per layer): copy it to the test machine and run `logitsdump localize replay`")
    return summary


def _record_case(case: str, spec: CaseSpec, model: Any, structure: Any,
                 controls: dict[str, Any]) -> tuple[RecordCase, dict[str, Any]]:
    from logitsdump.localize import passes

    tokens = list(spec.token_ids)
    captured = passes.capture(model, tokens, structure)
    packed = compact(captured.events)
    golden_sites = captured.tensors()
    lm_head = _lm_head_name(structure)
    golden_logits = golden_sites[f"{lm_head}:out"][0, -1]
    arms = {dtype: measure_arm(backend.model, tokens, structure, golden_sites, golden_logits, dtype,
                               golden_heads=captured.heads_in, golden_model=model).arm
            for dtype, backend in controls.items()}
    entry = RecordCase(
        id=case, subject=spec.subject, key=spec.key, task=spec.task, focus_step=spec.focus_step,
        focus_why=spec.focus_why, compare_verdict=spec.compare_verdict, token_ids=tuple(tokens),
        prompt_tokens=len(spec.prompt_ids), tensors_file=files.CASE_TENSORS.format(id=case), refs=packed.refs,
        checksums=packed.checksums, stored_bytes=packed.stored_bytes, controls=arms,
    )
    return entry, packed.stored


@dataclass(frozen=True)
class Measured:
    """An arm and the passes behind it (the isolated ones' kept outputs, with `keep`)."""

    arm: Arm
    plain: Any
    layer: Any
    module: Any


def measure_arm(model: Any, tokens: Sequence[int], structure: Any, golden_sites: dict[str, Any], golden_logits: Any,
                dtype: str, *, golden_heads: dict[int, Any] | None = None, golden_model: Any = None,
                keep: bool = False) -> Measured:
    """One configuration's passes on one case: a plain prefill (the cost baseline), the plain pass (accumulated
    errors, final KL), the layer-level and module-level isolated passes, and (with golden's heads) every
    layer's heads against golden's. With `keep`, the isolated passes keep their outputs."""
    from logitsdump.localize import passes

    _, prefill_seconds = passes.timed_prefill(model, tokens)
    plain = passes.plain(model, tokens, structure, golden_sites)
    layer = passes.isolated(model, tokens, structure, golden_sites, "layer", keep=keep)
    module = passes.isolated(model, tokens, structure, golden_sites, "module", keep=keep)
    if structure.of_kind("op"):  # the tensors mode's ops, measured as module-level candidates
        ops = passes.isolated(model, tokens, structure, golden_sites, "op", keep=keep)
        module.errors.update(ops.errors)
        module.outputs.update(ops.outputs)
        module.seconds += ops.seconds
    heads = {}
    if golden_heads and golden_model is not None:
        heads = layer_heads(structure, model, module.heads_in, golden_model, golden_heads)
    arm = Arm(
        dtype=dtype, attn=models.attention_of(model), module=module.errors, layer=layer.errors,
        accumulated=plain.errors, accumulated_in=plain.input_errors, cosine=plain.cosines,
        kl_focus=passes.kl_divergence(golden_logits, plain.logits[-1]), heads=heads,
        seconds={"prefill": prefill_seconds, "plain": plain.seconds, "layer": layer.seconds, "module": module.seconds},
    )
    return Measured(arm, plain, layer, module)


def layer_heads(structure: Any, model: Any, heads_in: dict[int, Any], golden_model: Any,
                golden_heads: dict[int, Any]) -> dict[int, HeadStats]:
    """Every layer's heads: the contributions of `model` (its heads' input, its output projection) against
    golden's."""
    from logitsdump.localize.candidates import output_projection
    from logitsdump.localize.heads import contributions, head_stats

    modules = dict(model.named_modules())
    golden_modules = dict(golden_model.named_modules())
    stats = {}
    for candidate in structure.candidates:
        if candidate.kind != "module" or candidate.layer not in heads_in or candidate.layer not in golden_heads:
            continue
        mine = output_projection(modules[candidate.name])
        theirs = output_projection(golden_modules[candidate.name])
        if mine is None or theirs is None:
            continue
        test = contributions(heads_in[candidate.layer], mine[1].weight, structure.heads)
        gold = contributions(golden_heads[candidate.layer], theirs[1].weight, structure.heads)
        stats[candidate.layer] = head_stats(test, gold)
    return stats


def _lm_head_name(structure: Any) -> str:
    from logitsdump.localize.candidates import LM_HEAD

    name = next((c.name for c in structure.candidates if c.module == LM_HEAD), None)
    if name is None:
        raise ConfigError("localize: the model has no output embedding (LM head)")
    return name

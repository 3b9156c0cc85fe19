"""The runner side of the logits dump: which cases to re-infer, and writing their files.

The file names and the manifest format belong to `store`; the folder to
`outputs.OutputLayout.logits_dir`; the environment protocol to `protocol`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump import store
from logitsdump.fsutil import make_dirs
from logitsdump.logs import get_logger
from logitsdump.protocol import HUMANEVALX_PREFIXES, DumpRequest
from logitsdump.runner.logits_folder import TEMPORARY, FolderClaim
from logitsdump.runner.tasks.base import Case
from logitsdump.topkfile import TopkStep, write_topk

log = get_logger("dump")


def select_cases(cases: Sequence[Case], request: DumpRequest) -> list[Case]:
    """The rows whose index is in the request, in dataset order; warn about indices that match no row.

    The five-list form selects per HumanEval-X language (by the key's prefix).
    """
    if request.per_language:
        wanted = {
            prefix: set(group) for prefix, group in zip(HUMANEVALX_PREFIXES, request.indices, strict=True)
        }
        chosen = [c for c in cases if c.index in wanted.get(c.key.split("/")[0], set())]
        for prefix, group in wanted.items():
            present = {c.index for c in cases if c.key.split("/")[0] == prefix}
            _warn_missing(sorted(group - present), f"{prefix} ")
        return chosen
    wanted_flat = set(request.indices)
    chosen = [c for c in cases if c.index in wanted_flat]
    _warn_missing(sorted(wanted_flat - {c.index for c in cases}), "")
    return chosen


def _warn_missing(missing: list[int], what: str) -> None:
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        log.warning("%d %sbad-case indices match no dataset row and were ignored: %s", len(missing), what, shown)


def logits_kind(extra: dict[str, Any]) -> str:
    """What a case's files hold: "raw" logits, or a server's logprobs mode (its top-k or whole vocabulary)."""
    topk = extra.get("topk")
    if not isinstance(topk, dict):
        return "raw"
    mode = str(topk.get("logprobs_mode", "raw_logprobs"))
    return mode if topk.get("k") == -1 else f"top{topk.get('k')}_{mode}"


def prompt_sha256(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DumpContext:
    """What every case record of one dump shares."""

    task: str
    model_name: str
    model_path: str
    dtype: str
    vocab_size: int
    device: str
    versions: dict[str, str]
    #: The run's provenance (`runner.provenance.run_provenance`), written beside the manifest.
    run: Mapping[str, Any] = field(default_factory=dict)
    #: merged into every case's manifest `extra` (a server's identity, its k and logprobs mode)
    extra: dict[str, Any] = field(default_factory=dict)


class LogitsWriter:
    """Writes each dumped case's logits files, then its manifest line."""

    def __init__(
        self, folder: Path, request: DumpRequest, context: DumpContext, manifest_name: str = store.MANIFEST_NAME
    ) -> None:
        self.folder = folder
        self.request = request
        self.context = context
        self.manifest_name = manifest_name  # a per-rank part in data-parallel runs
        self.complete: set[tuple[str, int]] = set()

    def _merged_records(self) -> list[store.CaseManifest]:
        """The manifest plus any data-parallel parts, complete cases only, in (subject, index) order."""
        records = {(r.subject, r.index): r for r in store.read_manifest(self.folder)}
        for part in sorted(self.folder.glob(store.MANIFEST_PART_GLOB)):
            records.update({(r.subject, r.index): r for r in store.read_manifest(self.folder, part.name)})
        kept = [r for r in records.values() if all((self.folder / f).is_file() for f in r.files)]
        return sorted(kept, key=lambda r: (r.subject, r.index))

    def _write_merged(self, records: Sequence[store.CaseManifest]) -> None:
        store.rewrite_manifest(self.folder, records)
        for part in self.folder.glob(store.MANIFEST_PART_GLOB):
            part.unlink()

    def prepare(self, vocab: Sequence[str], claim: FolderClaim) -> None:
        """Make the folder ready: with resume keep the complete cases (and remove our stale temporaries);
        with overwrite remove the previous dump's own files (`claim` decided which, and holds the lock).

        Called by one process only (rank 0); the others call `load_complete` after it.
        """
        if self.request.resume and self.folder.is_dir():
            kept = self._merged_records()
            self._write_merged(kept)
            for stale in self.folder.iterdir():
                if TEMPORARY.match(stale.name) and stale.is_file():
                    stale.unlink()
            log.info("resume: %d cases already complete in %s", len(kept), self.folder)
        elif claim.previous:
            claim.clear_previous_dump()
            log.info("overwrite: the previous dump's %d file(s) (%d complete case(s)) removed from %s",
                     len(claim.previous), claim.previous_cases, self.folder)
        make_dirs(self.folder)  # never world-writable, whatever the umask
        store.write_vocab(self.folder, vocab)
        if self.context.run:
            store.write_provenance(self.folder / store.PROVENANCE_NAME, store.RunProvenance(self.context.run))
        self.load_complete()

    def load_complete(self) -> None:
        """Learn which cases the manifest lists as complete (for resume)."""
        if self.request.resume:
            self.complete = {(r.subject, r.index) for r in store.read_manifest(self.folder)}

    def is_complete(self, case: Case) -> bool:
        return (case.subject, case.index) in self.complete

    def save(
        self,
        case: Case,
        step_logits: Sequence[Any],
        input_ids: Sequence[int],
        output_ids: Sequence[int],
        output_tokens: Sequence[str],
        output_text: str,
        extra: dict[str, Any] | None = None,
        inputs: store.CaseInputs | None = None,
    ) -> list[str]:
        """Write the case's files (one per step, at most N), then append its manifest line (with `inputs`,
        what the case fed the model)."""
        steps = step_logits[: self.request.token_max_length]
        topk = bool(steps) and isinstance(steps[0], TopkStep)
        names = []
        for t, logits in enumerate(steps):
            if topk:  # a server's top-k logprobs (runner/backends/openai.py)
                name = store.topk_file_name(case.subject, case.index, t)
                write_topk(self.folder / name, logits)
            else:
                name = store.logits_file_name(case.subject, case.index, t)
                store.save_logits(self.folder / name, logits.float() if self.request.logits_fp32 else logits)
            names.append(name)
        if topk:
            logits_dtype = "float64"
        else:
            logits_dtype = str(steps[0].float().dtype if self.request.logits_fp32 else steps[0].dtype) if steps else ""
        extra = {**self.context.extra, **(extra or {})}
        record = store.CaseManifest(
            task=self.context.task,
            subject=case.subject,
            key=case.key,
            index=case.index,
            files=tuple(names),
            input_token_ids=tuple(int(i) for i in input_ids),
            output_token_ids=tuple(int(i) for i in output_ids),
            output_tokens=tuple(output_tokens),
            output_text=output_text,
            query=case.query,
            prompt_sha256=prompt_sha256(case.query),
            model_name=self.context.model_name,
            model_path=self.context.model_path,
            dtype=self.context.dtype,
            logits_dtype=logits_dtype.replace("torch.", ""),
            vocab_size=self.context.vocab_size,
            device=self.context.device,
            logits_kind=logits_kind(extra),
            versions=self.context.versions,
            extra=extra,
            inputs=inputs.to_dict() if inputs is not None else {},
        )
        store.append_manifest(self.folder, record, self.manifest_name)
        return names

    def finish(self, matched: int) -> list[store.CaseManifest]:
        """Merge the manifest (and the ranks' parts) in (subject, index) order, write the dump's
        summary (`matched`: the requested cases found in the dataset); return the records."""
        records = self._merged_records()
        self._write_merged(records)
        store.write_dump_summary(self.folder, store.DumpSummary(self.request.case_count, matched, len(records),
                                                                self.request.dump_id))
        return records

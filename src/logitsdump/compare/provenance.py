"""Where the compared logits came from: each folder's vocabulary and manifest.

The manifests tell which cases were replayed (`dump --replay`) and hold each
case's question and generated tokens; the vocabularies give token texts. Both are
optional: a real modeltest's dump has neither, and compare works without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from logitsdump.compare.judge import ReplayedCase
from logitsdump.compare.manifest_records import ManifestSummary, ReplaySummary
from logitsdump.compare.records import ArgmaxChange, CaseRecord, Step
from logitsdump.logs import get_logger
from logitsdump.protocol import REPLAY_MODES
from logitsdump.store import CaseManifest, read_manifest, read_vocab

_log = get_logger("compare")


class DumpFolders:
    """The vocabularies (vocab.json) and case records (manifest.jsonl) of both folders, when present."""

    def __init__(self, golden_dir: Path, my_dir: Path) -> None:
        self.golden_dir, self.my_dir = golden_dir, my_dir
        self.golden_vocab = read_vocab(golden_dir)
        self.my_vocab = read_vocab(my_dir)
        self.golden_cases = _by_file(read_manifest(golden_dir))
        self.my_cases = _by_file(read_manifest(my_dir))

    def vocab_size(self) -> int | None:
        """The larger of the two vocabularies (vocab.json), None when neither folder has one."""
        sizes = [len(v) for v in (self.golden_vocab, self.my_vocab) if v is not None]
        return max(sizes) if sizes else None

    def dtypes(self) -> set[str]:
        """The data types (model YAML `data_type`) the two manifests record; empty without manifests."""
        records = (*self.golden_cases.values(), *self.my_cases.values())
        return {r.dtype for r in records if r.dtype}

    def dtype(self, *, golden: bool) -> str | None:
        """The data type one side's manifest records (the first line that has one), None without."""
        table = self.golden_cases if golden else self.my_cases
        return next((r.dtype for r in table.values() if r.dtype), None)

    def token(self, token_id: int | None, *, golden: bool) -> str | None:
        """The text of a token: from that side's vocabulary, else the other side's."""
        vocabs = (self.golden_vocab, self.my_vocab) if golden else (self.my_vocab, self.golden_vocab)
        for vocab in vocabs:
            if token_id is not None and vocab is not None and 0 <= token_id < len(vocab):
                return vocab[token_id]
        return None

    def replays(self, steps: Sequence[Step]) -> dict[tuple[str, int | str], ReplayedCase]:
        """(subject, key) -> the replay of each replayed case (the test's manifest, else golden's).

        A replay made from another folder than the one compared with is accepted when its
        forced tokens are that folder's generated tokens (the dump was moved); otherwise
        (it replayed another dump) the case is judged as a free run, with a warning.
        """
        out: dict[tuple[str, int | str], ReplayedCase] = {}
        seen: set[tuple[str, int | str]] = set()
        for step in steps:
            if step.key is None:
                continue
            case = (step.subject, step.key)
            if case in seen:
                continue
            seen.add(case)
            sides = (
                (self.my_cases, self.golden_cases, self.golden_dir),
                (self.golden_cases, self.my_cases, self.my_dir),
            )
            for table, other_table, other_dir in sides:
                record = table.get(step.file_name)
                replay = _replay_of(record)
                if record is None or replay is None:
                    continue
                if not _same_folder(replay.golden_dir, other_dir):
                    # replayed from another folder: the same dump moved, or another dump?
                    other = other_table.get(step.file_name)
                    forced = list(record.output_token_ids)
                    if other is None or list(other.output_token_ids[: len(forced)]) != forced:
                        _log.warning("case %s #%s: replayed from %s, whose tokens are not those of %s: judged as "
                                     "a free run", case[0], case[1], replay.golden_dir or "?", other_dir)
                        break
                out[case] = ReplayedCase(replay.mode, len(record.files))
                break
        return out

    def annotate(self, case: CaseRecord) -> CaseRecord:
        """`case` with token texts (from the vocabularies) and both sides' manifest summaries."""
        return replace(
            case,
            golden_token_text=self.token(case.golden_token, golden=True),
            my_token_text=self.token(case.my_token, golden=False),
            changes=tuple(self._change_texts(c) for c in case.changes),
            steps=tuple(self._step_texts(s) for s in case.steps),
            golden_manifest=self._manifest(case, golden=True),
            my_manifest=self._manifest(case, golden=False),
        )

    def _change_texts(self, change: ArgmaxChange) -> ArgmaxChange:
        return replace(change, golden_token_text=self.token(change.golden_token, golden=True),
                       my_token_text=self.token(change.my_token, golden=False))

    def _step_texts(self, step: Step) -> Step:
        return replace(step, golden_top1_text=self.token(step.metric("golden_top1"), golden=True),
                       my_top1_text=self.token(step.metric("my_top1"), golden=False))

    def _manifest(self, case: CaseRecord, *, golden: bool) -> ManifestSummary | None:
        table = self.golden_cases if golden else self.my_cases
        for step in case.steps:
            record = table.get(step.file_name)
            if record is not None:
                return _summary(record)
        return None


def _replay_of(record: CaseManifest | None) -> ReplaySummary | None:
    """The replay record of a manifest line, or None when the case was not replayed."""
    if record is None or not isinstance(record.extra, dict):
        return None
    replay = ReplaySummary.from_dict(record.extra.get("replay"))
    return replay if replay is not None and replay.mode in REPLAY_MODES else None


def _summary(record: CaseManifest) -> ManifestSummary:
    return ManifestSummary(
        task=record.task,
        index=record.index,
        query=record.query,
        input_token_ids=tuple(record.input_token_ids),
        output_token_ids=tuple(record.output_token_ids),
        output_tokens=tuple(record.output_tokens),
        output_text=record.output_text,
        model_name=record.model_name,
        dtype=record.dtype,
        logits_dtype=record.logits_dtype,
        device=record.device,
        logits_kind=record.logits_kind,
        replay=_replay_of(record),
    )


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _by_file(records: list[CaseManifest]) -> dict[str, CaseManifest]:
    return {name: record for record in records for name in record.files}

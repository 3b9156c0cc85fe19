"""Teacher-forced replay (`dump --replay GOLDEN_DIR`): feed the golden device's tokens.

After the first token where two devices choose differently, each continues from its own text, and
comparing their step t compares two different questions. In a replay the device under test is fed
the golden dump's generated tokens instead of its own choices, so step t of both dumps is predicted
from the same prefix, for all N steps. What the device would have chosen is kept in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from logitsdump import store
from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner.backends.base import Backend, Decoded, first_logits
from logitsdump.runner.tasks.base import Case

log = get_logger("replay")


class ReplaySource:
    """The golden dump a replay follows: its manifest, by (subject, index)."""

    def __init__(self, golden_dir: str | Path, mode: str) -> None:
        self.golden_dir = Path(golden_dir).resolve()
        self.mode = mode
        if not (self.golden_dir / store.MANIFEST_NAME).is_file():
            raise ConfigError(
                f"cannot replay {golden_dir}: it has no {store.MANIFEST_NAME}, so the golden device's generated "
                "tokens are unknown (a real modeltest's dump has none); dump the golden device with "
                "`logitsdump dump -e \"logitsdump eval ...\"` first"
            )
        self.records = {(r.subject, r.index): r for r in store.read_manifest(self.golden_dir)}

    def forced_tokens(self, case: Case, prompt_sha256: str, max_steps: int) -> list[int] | None:
        """The golden tokens to feed for `case`, or None (with a warning) when it cannot be replayed."""
        record = self.records.get((case.subject, case.index))
        if record is None:
            log.warning("replay: case %s (%s) is not in the golden dump %s: skipped", case.key, case.subject,
                        self.golden_dir)
            return None
        if record.prompt_sha256 != prompt_sha256:
            log.warning("replay: case %s (%s) has another prompt in the golden dump (prompt hash differs): "
                        "skipped; were both dumps made from the same task YAML and dataset?", case.key, case.subject)
            return None
        return [int(t) for t in record.output_token_ids[:max_steps]]

    def decode(self, backend: Backend, prompt: Sequence[int], forced: Sequence[int], keep_steps: int) -> Decoded:
        """Run the forced tokens through the model (step by step, or in one prefill pass)."""
        if not forced:
            return Decoded([], [], None)
        if self.mode == "prefill":
            logits = backend.prefill_logits(prompt, forced)
            own = [int(row.argmax()) for row in logits]
            return Decoded(list(forced), logits[:keep_steps], first_logits(backend, logits), own)
        return backend.greedy([prompt], len(forced), keep_steps, forced=[forced])[0]

    def extra(self, own_ids: Sequence[int]) -> dict[str, Any]:
        """What the manifest records about a replayed case."""
        return {"replay": {"golden_dir": str(self.golden_dir), "mode": self.mode, "own_tokens": list(own_ids)}}

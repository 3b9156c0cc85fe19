"""The verdict of a localised case and of a run, the causal check, the head; pure rules, no torch.

A candidate is *above band* when its score (`bands.Score.value`) exceeds ABOVE. Per case:
- `none`: no candidate above band; the resolution is stated: a module whose own error is below ABOVE times
  the control's on this prompt is not seen;
- `diffuse`: candidates above band in DIFFUSE_LAYERS or more layers (a global defect); the rotary embedding,
  the side input of every attention, is named as their common cause when it is above band with them;
- `culprit(layer, module)`: the top candidate stands out, STANDOUT times above every candidate of another
  layer that is above band; when other modules of the same layer are above band too, the culprit is the
  layer with those modules (fed golden's input, a healthy module's error does not spread to its neighbours);
  when no module but a whole decoder layer is above LAYER_ABOVE, the culprit is that layer (its error is
  between its modules; a whole layer compounds its modules' healthy differences, so its line is higher);
- `inconclusive`: above-band candidates in a few layers, none standing out, or a problem with the data
  (given by the caller), with the reason.
The run: the culprit named by more than half of the cases that see anything; else diffuse likewise; none
when no case sees anything; else inconclusive.
The constants were chosen on the bench's tuning runs (docs/localize.md), not on the cases it reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from logitsdump.localize.bands import Band, Score
from logitsdump.localize.candidates import ROTARY, Candidate

#: A candidate is above band when its score exceeds this.
ABOVE = 3.0
#: The top candidate stands out when it is at least this many times the next one of another layer.
STANDOUT = 2.0
#: Candidates above band in this many layers or more: diffuse.
DIFFUSE_LAYERS = 4
#: A whole decoder layer, none of its modules above band, is named above this (the tuning run's healthy bf16
#: pair reached 3.4 on a layer, 2.1 on a module).
LAYER_ABOVE = 2 * ABOVE
#: The causal check is run when the test's final KL is at least this many times the control arm's (the noise).
NOISE_FACTOR = 3.0
#: Necessity: taking the culprit's own error out of the test run removes at least this part of the test's change of
#: the logits along it (REMOVED; or, for a replay that kept no necessity logits, of the final KL's excess over the
#: noise); sufficiency: the culprit alone reproduces at least this part of that change (SHARE) (`causal_check`).
MOST = 0.5
#: Sufficiency: the culprit alone moves the logits the test's way: its change of the logits is closer to the test's
#: change (cosine) than any of NULL_DRAWS changes of the culprit's size (per token) in random directions at the same
#: place, and reproduces at least SHARE of the test's change along it (`sufficient`). The random changes are the null
#: of the same case and site: on SmolLM2 any change there moves the logits partly one common way (a random change
#: reached cosine 0.72 with the test's on a tuning case), and a true culprit near the noise stays under any fixed
#: line (0.59 to 0.71 on the tuning runs), so a fixed line fails both ways. A deviation no better than random beats
#: the NULL_DRAWS draws by chance 1 / (NULL_DRAWS + 1) of the time; ALIGNED_FLOOR makes it rarer.
#: Chosen on the tuning runs (seeds 0-2, every local family), docs/localize.md.
NULL_DRAWS = 12
ALIGNED_FLOOR = 0.5
SHARE = MOST
#: Necessity: the part of the test's change of the logits (from the control arm's) that taking the culprit's own
#: error out removes, along that change, is at least REMOVED (`causal_check`). Chosen on the tuning runs (seeds 0-2):
#: the true culprits removed 0.73 to 1.06 of it (26 cases), the decoys beside them (a healthy module's roundoff
#: taken out) at most 0.19 (40 cases).
REMOVED = MOST
#: Necessity, where the check is testable, is judged on the test's, the necessity runs' and the control arm's logits
#: each averaged over this many realizations of the roundoff (`passes.averaged_logits`): near the NOISE_FACTOR line
#: the test's change of the logits is about half the defect's effect and half a fresh draw of bf16 roundoff after it,
#: which made necessity a coin flip there. Sufficiency stays on single runs: where both sides run the same kernels
#: its run shares much of the test's plain run's roundoff, which averaging the test alone loses. Chosen on the tuning
#: runs (seed 0), docs/localize.md.
DITHER_RUNS = 4
#: The smallest noise KL the causal check assumes (a control bit-identical to golden has KL 0).
KL_FLOOR = 1e-9
#: Scores are written at most this large (JSON has no infinity).
SCORE_CAP = 1e12

#: Model-level modules whose output reaches every layer as a side input: named as a diffuse verdict's common cause.
SHARED_INPUTS = (ROTARY,)

CULPRIT, DIFFUSE, NONE, INCONCLUSIVE = "culprit", "diffuse", "none", "inconclusive"
KINDS = (CULPRIT, DIFFUSE, NONE, INCONCLUSIVE)


@dataclass(frozen=True)
class Scored:
    """A candidate, its band and its score on one case."""

    candidate: Candidate
    band: Band
    score: Score

    @property
    def value(self) -> float:
        return self.score.value

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.candidate.name, "label": self.candidate.label, "layer": self.candidate.layer,
                "module": self.candidate.module, "kind": self.candidate.kind,
                "local_mean": self.score.mean, "local_max": self.score.max,
                "band_mean": self.band.mean, "band_max": self.band.max, "band_widened": self.band.widened,
                "band_floored": self.band.floored, "band_prompts": self.band.prompts,
                "score": _capped(self.value)}


@dataclass(frozen=True)
class CaseVerdict:
    """What localize concludes about one case."""

    kind: str
    reason: str
    layer: int | None = None
    module: str | None = None
    #: The candidate names of the culprit (what the causal check patches): one module, or a layer's modules.
    names: tuple[str, ...] = ()
    score: float | None = None
    #: The best candidate that is not part of the culprit, and its score.
    runner_up: str | None = None
    runner_up_score: float | None = None
    #: Labels of the candidates above band, best first.
    above: tuple[str, ...] = ()
    #: Diffuse: the model-level module above band with them.
    common_cause: str | None = None
    head: int | None = None
    #: The smallest score this verdict would have seen (ABOVE).
    resolution: float = ABOVE

    @property
    def site(self) -> str | None:
        """`L15.self_attn` (a culprit's layer and module), `L15` for a layer, the label of a model-level one."""
        if self.kind != CULPRIT:
            return None
        if self.layer is None:
            return self.module
        return f"L{self.layer}" if self.module in (None, "layer") else f"L{self.layer}.{self.module}"

    @property
    def label(self) -> str:
        """`culprit(15, self_attn, head 3)`, `diffuse`, `none`, `inconclusive`."""
        if self.kind != CULPRIT:
            return self.kind
        where = [str(self.layer) if self.layer is not None else "model", self.module or "layer"]
        if self.head is not None:
            where.append(f"head {self.head}")
        return f"culprit({', '.join(where)})"

    def with_head(self, head: int | None) -> CaseVerdict:
        return CaseVerdict(**{**self.__dict__, "head": head})

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["names"] = list(self.names)
        data["above"] = list(self.above)
        data["label"] = self.label
        data["site"] = self.site
        data["score"] = _capped(self.score)
        data["runner_up_score"] = _capped(self.runner_up_score)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseVerdict:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["names"] = tuple(values.get("names", ()))
        values["above"] = tuple(values.get("above", ()))
        return cls(**values)


def judge_case(modules: Sequence[Scored], layers: Sequence[Scored] = (), *, problem: str | None = None,
               depth: int | None = None) -> CaseVerdict:
    """The verdict of one case from its module-level (and model-level) scores and its layer-level scores; `depth`:
    the model's layers (a model of fewer than DIFFUSE_LAYERS is diffuse when all of them are above band)."""
    if problem is not None:
        return CaseVerdict(INCONCLUSIVE, problem)
    ranked = sorted(modules, key=lambda s: -s.value)
    above = [s for s in ranked if s.value > ABOVE]
    labels = tuple(s.candidate.label for s in above)
    if not above:
        return _layer_or_none(ranked, sorted(layers, key=lambda s: -s.value))
    hit_layers = sorted({s.candidate.layer for s in above if s.candidate.layer is not None})
    if len(hit_layers) >= min(DIFFUSE_LAYERS, max(2, depth or DIFFUSE_LAYERS)):
        shared = [s for s in above if s.candidate.module in SHARED_INPUTS]
        cause = shared[0] if shared else None
        reason = f"{len(above)} candidates in {len(hit_layers)} layers above {ABOVE:g}x their band"
        if cause is not None:
            reason += (f"; {cause.candidate.label} is above band too ({cause.value:.3g}x), a side input of every "
                       "layer: a global defect there")
        else:
            reason += ": a global defect (every layer, e.g. a norm's epsilon or a kernel used everywhere)"
        return CaseVerdict(DIFFUSE, reason, above=labels, common_cause=cause.candidate.label if cause else None,
                           score=above[0].value)
    top = above[0]
    rivals = [s for s in above[1:] if s.candidate.layer != top.candidate.layer or top.candidate.layer is None]
    if rivals and top.value < STANDOUT * rivals[0].value:
        return CaseVerdict(INCONCLUSIVE, f"{len(above)} candidates in {len(hit_layers)} layer(s) above band, none "
                           f"standing out {STANDOUT:g}x: {top.candidate.label} {top.value:.3g}x, "
                           f"{rivals[0].candidate.label} {rivals[0].value:.3g}x", above=labels, score=top.value,
                           runner_up=rivals[0].candidate.label, runner_up_score=rivals[0].value)
    companions = [s for s in above[1:] if top.candidate.layer is not None and s.candidate.layer == top.candidate.layer]
    group = [top, *companions]
    others = [s for s in ranked if s not in group]
    runner = others[0] if others else None
    if companions:
        module = "+".join(s.candidate.module for s in group)
        reason = (f"layer {top.candidate.layer}: {', '.join(f'{s.candidate.module} {s.value:.3g}x' for s in group)} "
                  "above band")
    else:
        module = top.candidate.module
        reason = f"{top.candidate.label} at {top.value:.3g}x its band"
        if runner is not None:
            reason += f", next {runner.candidate.label} at {runner.value:.3g}x"
    if rivals:
        reason += f"; also above band elsewhere: {', '.join(s.candidate.label for s in rivals[:4])}"
    return CaseVerdict(CULPRIT, reason, layer=top.candidate.layer, module=module,
                       names=tuple(s.candidate.name for s in group), score=top.value,
                       runner_up=runner.candidate.label if runner else None,
                       runner_up_score=runner.value if runner else None, above=labels)


def _layer_or_none(modules: Sequence[Scored], layers: Sequence[Scored]) -> CaseVerdict:
    above = [s for s in layers if s.value > LAYER_ABOVE]
    if above and (len(above) == 1 or above[0].value >= STANDOUT * above[1].value):
        top = above[0]
        return CaseVerdict(CULPRIT, f"layer {top.candidate.layer} as a whole at {top.value:.3g}x its band, none of "
                           "its modules above band: the error is between its modules (e.g. the residual additions)",
                           layer=top.candidate.layer, module="layer", names=(top.candidate.name,), score=top.value,
                           above=(top.candidate.label,))
    if above:
        return CaseVerdict(INCONCLUSIVE, f"{len(above)} decoder layers above band as a whole, no module of them, "
                           "none standing out", above=tuple(s.candidate.label for s in above), score=above[0].value)
    best = modules[0] if modules else None
    reason = f"no candidate above {ABOVE:g}x its band"
    if best is not None:
        reason += f" (largest: {best.candidate.label} at {best.value:.3g}x)"
    reason += (f": below this method's resolution, a module whose own error is under {ABOVE:g}x the control's on "
               "this prompt")
    return CaseVerdict(NONE, reason, score=best.value if best else None,
                       runner_up=best.candidate.label if best else None)


@dataclass(frozen=True)
class RunVerdict:
    """What localize concludes about all the cases of a run."""

    kind: str
    reason: str
    site: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"culprit({self.site})" if self.kind == CULPRIT else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "site": self.site, "reason": self.reason,
                "counts": dict(self.counts)}


def judge_run(verdicts: Sequence[CaseVerdict]) -> RunVerdict:
    """The run's verdict (see the module docstring)."""
    counts = {kind: sum(v.kind == kind for v in verdicts) for kind in KINDS}
    seeing = [v for v in verdicts if v.kind != NONE]
    if not verdicts:
        return RunVerdict(INCONCLUSIVE, "no case was localised", counts=counts)
    if not seeing:
        return RunVerdict(NONE, f"no candidate above band in any of the {len(verdicts)} cases", counts=counts)
    sites: dict[str, int] = {}
    for v in seeing:
        if v.site is not None:
            sites[v.site] = sites.get(v.site, 0) + 1
    if sites:
        site, count = max(sites.items(), key=lambda kv: kv[1])
        if 2 * count > len(seeing):
            return RunVerdict(CULPRIT, f"{site} in {count} of the {len(seeing)} cases that see a defect "
                              f"({counts[NONE]} of {len(verdicts)} see none)", site=site, counts=counts)
    if 2 * counts[DIFFUSE] > len(seeing):
        return RunVerdict(DIFFUSE, f"{counts[DIFFUSE]} of the {len(seeing)} cases that see a defect find it in many "
                          "layers", counts=counts)
    shown = ", ".join(f"{n} {s}" for s, n in sorted(sites.items(), key=lambda kv: -kv[1])[:4])
    return RunVerdict(INCONCLUSIVE, f"the cases disagree: {shown or 'no common culprit'}; {counts[DIFFUSE]} diffuse, "
                      f"{counts[INCONCLUSIVE]} inconclusive", counts=counts)


@dataclass(frozen=True)
class Sufficiency:
    """The control arm's run with only the culprit's deviation added: its final KL against golden, and how its
    change of the logits goes the way of the test's (`passes.alignment`: cosine and projection; None without the
    test's logits)."""

    kl: float
    cosine: float | None = None
    share: float | None = None
    #: The same run's cosines with NULL_DRAWS changes of the deviation's size in random directions instead (none
    #: for a zero deviation).
    null: tuple[float, ...] = ()

    @property
    def null_max(self) -> float | None:
        return max(self.null) if self.null else None


@dataclass(frozen=True)
class Causal:
    """The causal check of a culprit: necessity (the culprit's own error taken out of the test run) and sufficiency
    (only the culprit run the test way, inside the control arm's run)."""

    outcome: str
    reason: str
    kl_test: float
    kl_noise: float
    kl_necessity: float | None = None
    kl_sufficiency: float | None = None
    #: The parts of the final KL's excess over the noise that taking the culprit's error out removes, and that the
    #: culprit alone reproduces in the control arm (reported; sufficiency is judged on the logits' change).
    necessity_recovered: float | None = None
    sufficiency_reproduced: float | None = None
    necessity_holds: bool | None = None
    sufficiency_holds: bool | None = None
    #: The sufficiency run in golden's own dtype, and the part of the excess it reproduces (reported, not judged).
    kl_sufficiency_golden: float | None = None
    sufficiency_golden_reproduced: float | None = None
    #: The sufficiency run's change of the logits against the test's, both from the control arm's (judged).
    sufficiency_cosine: float | None = None
    sufficiency_share: float | None = None
    #: The largest cosine with the test's change of the random changes of the deviation's size at the same place,
    #: and how many were drawn (sufficiency's null).
    sufficiency_null_max: float | None = None
    sufficiency_null_draws: int | None = None
    #: The part of the test's change of the logits that taking the culprit's error out removes, along that change,
    #: and the removed change's cosine with it (`passes.removal`; judged: necessity_share, when the replay kept the
    #: necessity run's logits); `necessity_rule`: what necessity was judged on, "direction" or "kl" (older replays).
    necessity_share: float | None = None
    necessity_cosine: float | None = None
    necessity_rule: str | None = None
    #: A decoy's candidate and kind ("next layer", "next module": the replay's own decoys; "random direction",
    #: "moved to <name>": the golden side's, sufficiency only).
    names: tuple[str, ...] = ()
    decoy: str | None = None
    #: How many realizations of the roundoff necessity's changes were averaged over (1: single runs).
    dither_runs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Causal:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["names"] = tuple(values.get("names") or ())
        return cls(**values)


CONFIRMED, REFUTED, UNTESTABLE, NOT_RUN = "confirmed", "refuted", "untestable", "not-run"


def causal_check(kl_test: float, kl_noise: float, kl_necessity: float | None, sufficiency: Sufficiency | None,
                 kl_sufficiency_golden: float | None = None, *, removal: tuple[float, float] | None = None) -> Causal:
    """The causal check of a culprit at the focus step, run when the test's final KL is clearly above the noise
    (NOISE_FACTOR times the control arm's). Both halves are judged on the change of the logits at the focus step
    from the control arm's (golden's device in the test dtype), over the whole vocabulary, centred (`passes`):
    - necessity: the test run with the culprit's own error taken out (`kl_necessity`, and `removal`: (cosine,
      share) of the change it removes, `passes.removal`; the test's, the patched and the control arm's logits each
      averaged over DITHER_RUNS realizations of the roundoff) removes at least REMOVED of the test's change along it.
      Not the KL it comes back to: the patched run keeps the test's bf16 roundoff everywhere else, which drives
      its KL around the noise's by as much as the excess of a case a few times over the noise; that roundoff
      hardly projects on the test's change. Without `removal` (a replay that kept no necessity logits) necessity
      falls back to the KL: the patched run loses at least MOST of the test's KL excess over the noise (said in
      the reason). The recovered KL fraction is reported either way;
    - sufficiency: the control arm with only the culprit's deviation added to its output (`sufficiency`) moves the
      logits the test's way (`sufficient`): the cosine of its change with the test's change is above every one of
      NULL_DRAWS random changes of the same size at the same place and at least ALIGNED_FLOOR, and its projection
      on the test's change at least SHARE of that change. Not the KL it reaches: a bf16 network does
      not add a perturbation's effect to its own noise (around SmolLM2's massive activations bf16's spacing is
      128), so the KL of an aligned change still falls short of the test's on many cases. The reproduced KL
      fraction and the same run in golden's own dtype (`kl_sufficiency_golden`) are reported."""
    kl_sufficiency = sufficiency.kl if sufficiency is not None else None
    noise = max(kl_noise if math.isfinite(kl_noise) else 0.0, KL_FLOOR)
    if not testable(kl_test, kl_noise):
        return Causal(UNTESTABLE, f"the final KL at the focus step ({kl_test:.3g}) is within {NOISE_FACTOR:g}x the "
                      f"noise (the control arm's {kl_noise:.3g}): nothing clear to recover", kl_test, kl_noise,
                      kl_necessity, kl_sufficiency, kl_sufficiency_golden=kl_sufficiency_golden)
    if kl_necessity is None or sufficiency is None or sufficiency.cosine is None or sufficiency.share is None:
        missing = "necessity" if kl_necessity is None else "sufficiency"
        return Causal(NOT_RUN, f"the {missing} run is missing (judge without the golden model, or the replay "
                      "patched another candidate)", kl_test, kl_noise, kl_necessity, kl_sufficiency,
                      kl_sufficiency_golden=kl_sufficiency_golden)
    excess = kl_test - noise
    recovered = (kl_test - kl_necessity) / excess
    reproduced = (sufficiency.kl - noise) / excess
    removed_cosine, removed = removal if removal is not None else (None, None)
    necessary = removed >= REMOVED if removed is not None else recovered >= MOST
    sufficient_ = sufficient(sufficiency)
    kl_part = (f"KL {kl_test:.3g} -> {kl_necessity:.3g} ({recovered:.0%} of the excess over the noise {noise:.3g} "
               "removed)")
    if removed is not None:
        parts = [f"its own error taken out of the test run: {removed:.0%} of the test's change of the logits removed "
                 f"along it (the removed change at cosine {removed_cosine:.2f} with it; {kl_part})"]
    else:
        parts = [f"its own error taken out of the test run: {kl_part}; judged on the KL: the replay kept no "
                 "necessity logits (an older replay)"]
    parts.append(f"only it run the test way in the control arm: {_moved_text(sufficiency)} "
                 f"(KL {sufficiency.kl:.3g}, {reproduced:.0%} of the excess)")
    golden_part = None
    if kl_sufficiency_golden is not None:
        golden_part = kl_sufficiency_golden / excess
        parts.append(f"in golden's own dtype: KL {kl_sufficiency_golden:.3g} ({golden_part:.0%})")
    if not necessary:
        parts.append("taking it out leaves most of the test's change: another site contributes" if removed is not None
                     else "taking it out leaves most of the excess: another site contributes")
    if not sufficient_:
        parts.append("alone it does not move the logits the test's way (cosine not above every random change's, "
                     f"under {ALIGNED_FLOOR:g}, or under {SHARE:.0%} along it)")
    outcome = CONFIRMED if necessary and sufficient_ else REFUTED
    return Causal(outcome, "; ".join(parts), kl_test, kl_noise, kl_necessity, sufficiency.kl, recovered, reproduced,
                  necessary, sufficient_, kl_sufficiency_golden, golden_part, sufficiency.cosine, sufficiency.share,
                  necessity_share=removed, necessity_cosine=removed_cosine,
                  necessity_rule="direction" if removed is not None else "kl", **_null_fields(sufficiency))


def testable(kl_test: float, kl_noise: float) -> bool:
    """Whether the causal check can be judged: the test's final KL is above NOISE_FACTOR times the noise's."""
    return kl_test > NOISE_FACTOR * max(kl_noise if math.isfinite(kl_noise) else 0.0, KL_FLOOR)


def sufficient(sufficiency: Sufficiency) -> bool:
    """Sufficiency's rule (`causal_check`): the change of the logits goes the test's way, closer to the test's change
    than every random change of its size at the same place (ALIGNED_FLOOR at least), and SHARE of it along it."""
    if sufficiency.cosine is None or sufficiency.share is None:
        return False
    beaten = sufficiency.null_max if sufficiency.null_max is not None else -1.0
    return sufficiency.cosine > beaten and sufficiency.cosine >= ALIGNED_FLOOR and sufficiency.share >= SHARE


def _moved_text(sufficiency: Sufficiency) -> str:
    null = (f" (its {len(sufficiency.null)} random changes of the same size there: at most "
            f"{sufficiency.null_max:.2f})" if sufficiency.null_max is not None else "")
    return (f"its change of the logits at cosine {sufficiency.cosine or 0.0:.2f} with the test's{null}, "
            f"{sufficiency.share or 0.0:.0%} of it along it")


def _null_fields(sufficiency: Sufficiency) -> dict[str, Any]:
    return {"sufficiency_null_max": sufficiency.null_max, "sufficiency_null_draws": len(sufficiency.null) or None}


def sufficiency_only(kl_test: float, kl_noise: float, sufficiency: Sufficiency) -> Causal:
    """A check on sufficiency alone (a golden-side decoy, which has no necessity run): confirmed or refuted by
    `sufficient`, untestable as in `causal_check`."""
    noise = max(kl_noise if math.isfinite(kl_noise) else 0.0, KL_FLOOR)
    if not testable(kl_test, kl_noise):
        return Causal(UNTESTABLE, "the final KL is within the noise", kl_test, kl_noise,
                      kl_sufficiency=sufficiency.kl)
    holds = sufficient(sufficiency)
    reason = f"sufficiency only: {_moved_text(sufficiency)}"
    return Causal(CONFIRMED if holds else REFUTED, reason, kl_test, kl_noise, kl_sufficiency=sufficiency.kl,
                  sufficiency_reproduced=(sufficiency.kl - noise) / (kl_test - noise), sufficiency_holds=holds,
                  sufficiency_cosine=sufficiency.cosine, sufficiency_share=sufficiency.share,
                  **_null_fields(sufficiency))


def judge_heads(test_mean: Sequence[float], test_max: Sequence[float], band_mean: Sequence[float],
                band_max: Sequence[float]) -> tuple[int | None, list[float], str]:
    """The head of an attention culprit: (head or None, every head's score, why)."""
    scores = [max(_ratio(tm, bm), _ratio(tx, bx))
              for tm, tx, bm, bx in zip(test_mean, test_max, band_mean, band_max, strict=True)]
    order = sorted(range(len(scores)), key=lambda h: -scores[h])
    above = [h for h in order if scores[h] > ABOVE]
    if not above:
        return None, scores, "no head's contribution above band: the error is after the heads (the output projection)"
    top = above[0]
    second = scores[order[1]] if len(order) > 1 else 0.0
    if scores[top] >= STANDOUT * second:
        return top, scores, f"head {top} at {scores[top]:.3g}x its band, next {second:.3g}x"
    return None, scores, f"{len(above)} heads above band, none standing out: the attention as a whole"


def _ratio(value: float, reference: float) -> float:
    if reference > 0:
        return value / reference
    return 0.0 if value == 0 else math.inf


def _capped(value: float | None) -> float | None:
    if value is None:
        return None
    return min(value, SCORE_CAP) if not math.isnan(value) else None

"""localize's pure parts: bands, scores, the verdict rules per case and run, the causal check, heads, msprobe."""

from __future__ import annotations

import math

import pytest

from logitsdump.localize import bands, msprobe, verdict
from logitsdump.localize.candidates import Candidate
from logitsdump.localize.verdict import (
    Causal,
    Scored,
    Sufficiency,
    causal_check,
    judge_case,
    judge_heads,
    judge_run,
    sufficiency_only,
)


def test_band_of_one_case_is_its_mean_and_max() -> None:
    band = bands.band_of([0.001, 0.003, 0.002] * 10)
    assert band.mean == pytest.approx(0.002) and band.max == 0.003
    assert band.widened == 1.0 and not band.floored and band.tokens == 30


def test_a_band_from_few_tokens_is_widened_and_says_so() -> None:
    band = bands.band_of([0.002] * 4)
    assert band.widened == pytest.approx(2.0)  # sqrt(16 / 4)
    assert band.mean == pytest.approx(0.004)


def test_a_bit_identical_control_in_golden_dtype_gets_the_floor() -> None:
    floor = bands.floor_for("fp32", "fp32")
    assert floor == pytest.approx(bands.FLOOR_UNITS * 2.0**-24)
    band = bands.band_of([0.0] * 20, floor=floor)
    assert band.floored and band.mean == floor
    assert bands.floor_for("bf16", "fp32") == 0.0  # a lower precision's rounding is a real band


def test_a_pooled_band_from_few_prompts_is_widened() -> None:
    few = bands.pooled_band([[0.001] * 20, [0.002] * 20])
    many = bands.pooled_band([[0.001] * 20] * 7 + [[0.002] * 20])
    assert few.prompts == 2 and few.widened == pytest.approx(1 + 1 / math.sqrt(2))
    assert many.widened == 1.0 and many.mean == pytest.approx(0.002)


def test_score_is_the_larger_ratio() -> None:
    band = bands.band_of([0.001] * 20)
    assert bands.score([0.001] * 19 + [0.01], band).value == pytest.approx(10.0)  # the max
    assert bands.score([0.005] * 20, band).value == pytest.approx(5.0)  # the mean


def _scored(layer: int | None, module: str, value: float) -> Scored:
    kind = "model" if layer is None else "module"
    name = module if layer is None else f"model.layers.{layer}.{module}"
    band = bands.band_of([0.001] * 20)
    return Scored(Candidate(name, layer, module, kind, "X"), band, bands.score([0.001 * value] * 20, band))


def _healthy(depth: int = 6) -> list[Scored]:
    return [_scored(layer, module, 1.0) for layer in range(depth)
            for module in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")]


def test_one_module_above_band_is_the_culprit() -> None:
    case = judge_case([*_healthy(), _scored(3, "mlp", 40.0)])
    assert case.kind == "culprit" and (case.layer, case.module) == (3, "mlp")
    assert case.names == ("model.layers.3.mlp",) and case.site == "L3.mlp"
    assert case.label == "culprit(3, mlp)" and case.with_head(2).label == "culprit(3, mlp, head 2)"


def test_two_modules_of_one_layer_make_a_layer_culprit() -> None:
    case = judge_case([*_healthy(), _scored(2, "self_attn", 40.0), _scored(2, "mlp", 4.0)])
    assert case.kind == "culprit" and case.layer == 2 and case.module == "self_attn+mlp"
    assert set(case.names) == {"model.layers.2.self_attn", "model.layers.2.mlp"}


def test_nothing_above_band_is_none_with_the_resolution() -> None:
    case = judge_case(_healthy())
    assert case.kind == "none" and f"{verdict.ABOVE:g}x" in case.reason and "resolution" in case.reason


def test_many_layers_above_band_is_diffuse_with_the_rotary_embedding_as_its_cause() -> None:
    scores = [*_healthy(), *[_scored(layer, "self_attn", 8.0 + layer) for layer in range(6)],
              _scored(None, "rotary_emb", 500.0)]
    case = judge_case(scores)
    assert case.kind == "diffuse" and case.common_cause == "rotary_emb"
    without = judge_case([s for s in scores if s.candidate.module != "rotary_emb"])
    assert without.kind == "diffuse" and without.common_cause is None


def test_a_few_layers_above_band_without_a_leader_is_inconclusive() -> None:
    case = judge_case([*_healthy(), _scored(1, "mlp", 6.0), _scored(4, "mlp", 5.0)])
    assert case.kind == "inconclusive" and "none standing out" in case.reason


def test_a_leader_standing_out_over_another_layer_is_still_the_culprit() -> None:
    case = judge_case([*_healthy(), _scored(1, "mlp", 60.0), _scored(4, "mlp", 5.0)])
    assert case.kind == "culprit" and case.layer == 1 and "also above band elsewhere: L4.mlp" in case.reason


def test_a_whole_layer_above_band_without_its_modules() -> None:
    layers = [Scored(Candidate(f"model.layers.{i}", i, "layer", "layer", "X"), bands.band_of([0.001] * 20),
                     bands.score([0.001 * (9.0 if i == 5 else 1.0)] * 20, bands.band_of([0.001] * 20)))
              for i in range(6)]
    case = judge_case(_healthy(), layers)
    assert case.kind == "culprit" and case.layer == 5 and case.module == "layer"
    assert verdict.ABOVE < 4.0 < verdict.LAYER_ABOVE
    lower = [Scored(s.candidate, s.band, bands.score([0.004] * 20, s.band)) if s.candidate.layer == 5 else s
             for s in layers]
    assert judge_case(_healthy(), lower).kind == "none"  # a layer alone needs more than a module


def test_a_problem_is_inconclusive_with_its_reason() -> None:
    case = judge_case([], problem="the record and the replay do not match")
    assert case.kind == "inconclusive" and case.reason == "the record and the replay do not match"


def test_case_verdict_round_trips_through_its_dict() -> None:
    case = judge_case([*_healthy(), _scored(3, "mlp", 40.0)]).with_head(None)
    assert verdict.CaseVerdict.from_dict(case.to_dict()) == case


def test_the_run_takes_the_culprit_most_cases_see() -> None:
    culprit = judge_case([*_healthy(), _scored(3, "mlp", 40.0)])
    other = judge_case([*_healthy(), _scored(1, "self_attn", 40.0)])
    none = judge_case(_healthy())
    run = judge_run([culprit, culprit, none, other])
    assert run.kind == "culprit" and run.site == "L3.mlp"
    assert judge_run([none, none]).kind == "none"
    assert judge_run([culprit, other]).kind == "inconclusive"
    assert judge_run([]).kind == "inconclusive"


def test_causal_check_confirms_refutes_and_says_when_it_cannot() -> None:
    aligned = Sufficiency(kl=0.05, cosine=0.9, share=0.8)  # its KL falls short, its change goes the test's way
    confirmed = causal_check(kl_test=0.5, kl_noise=0.001, kl_necessity=0.002, sufficiency=aligned,
                             kl_sufficiency_golden=0.2)
    assert confirmed.outcome == "confirmed" and confirmed.sufficiency_holds
    assert confirmed.necessity_recovered == pytest.approx(0.498 / 0.499)  # of the excess over the noise
    assert confirmed.sufficiency_reproduced == pytest.approx(0.049 / 0.499)  # reported, not judged
    assert confirmed.sufficiency_golden_reproduced == pytest.approx(0.2 / 0.499)  # reported, not judged
    not_necessary = causal_check(0.5, 0.001, 0.3, aligned)
    assert not_necessary.outcome == "refuted" and not not_necessary.necessity_holds
    elsewhere = causal_check(0.5, 0.001, 0.002, Sufficiency(0.45, cosine=0.3, share=0.9))  # another direction
    assert elsewhere.outcome == "refuted" and not elsewhere.sufficiency_holds
    too_little = causal_check(0.5, 0.001, 0.002, Sufficiency(0.002, cosine=0.9, share=0.4))  # the way, not enough
    assert too_little.outcome == "refuted" and not too_little.sufficiency_holds
    assert causal_check(0.5, 0.001, 0.002, Sufficiency(0.0, 0.0, 0.0)).outcome == "refuted"  # no change at all
    assert causal_check(0.002, 0.001, 0.001, aligned).outcome == "untestable"
    assert causal_check(0.5, 0.001, 0.002, None).outcome == "not-run"
    assert causal_check(0.5, 0.001, 0.002, Sufficiency(0.45)).outcome == "not-run"  # no test logits: no direction


def test_sufficiency_must_beat_random_changes_of_its_size_at_the_same_place() -> None:
    null = (0.2, 0.45, 0.62, 0.1)
    # near the noise a true culprit's cosine stays low, but no random change there comes as close
    beats = causal_check(0.5, 0.001, 0.002, Sufficiency(0.05, cosine=0.66, share=0.6, null=null))
    assert beats.outcome == "confirmed" and beats.sufficiency_holds
    assert beats.sufficiency_null_max == pytest.approx(0.62) and beats.sufficiency_null_draws == 4
    assert "at most 0.62" in beats.reason
    # a high cosine that a random change of the same size reaches too says nothing about this deviation
    generic = causal_check(0.5, 0.001, 0.002, Sufficiency(0.05, cosine=0.8, share=0.9, null=(*null, 0.81)))
    assert generic.outcome == "refuted" and not generic.sufficiency_holds
    # under the floor, even above every draw; and the share still counts
    low = causal_check(0.5, 0.001, 0.002, Sufficiency(0.05, cosine=verdict.ALIGNED_FLOOR - 0.01, share=0.9,
                                                      null=(0.1,)))
    assert not low.sufficiency_holds
    assert not causal_check(0.5, 0.001, 0.002, Sufficiency(0.05, 0.9, 0.4, null=null)).sufficiency_holds
    # the same rule for a golden-side decoy, judged on sufficiency alone
    decoy = sufficiency_only(0.5, 0.001, Sufficiency(0.05, cosine=0.6, share=0.7, null=(0.65,)))
    assert decoy.outcome == "refuted" and decoy.sufficiency_null_max == pytest.approx(0.65)
    assert Causal.from_dict(beats.to_dict()) == beats


def test_necessity_is_judged_on_the_change_it_removes_and_falls_back_to_the_kl() -> None:
    aligned = Sufficiency(kl=0.05, cosine=0.9, share=0.8)
    # the patched run's KL stays high (its own roundoff elsewhere) but the test's change is gone along it
    removed = causal_check(0.01, 0.002, 0.008, aligned, removal=(0.6, 0.9))
    assert removed.outcome == "confirmed" and removed.necessity_holds and removed.necessity_rule == "direction"
    assert removed.necessity_share == pytest.approx(0.9) and removed.necessity_cosine == pytest.approx(0.6)
    assert removed.necessity_recovered == pytest.approx(0.25)  # the KL fraction is still reported
    assert "90% of the test's change" in removed.reason
    # the KL comes back to the noise, yet the test's change is still there along it: not necessary
    kept = causal_check(0.5, 0.001, 0.002, aligned, removal=(0.1, 0.2))
    assert kept.outcome == "refuted" and kept.necessity_holds is False and kept.necessity_recovered > 0.99
    edge = causal_check(0.5, 0.001, 0.3, aligned, removal=(0.5, verdict.REMOVED))
    assert edge.necessity_holds
    # an older replay without the necessity run's logits: the KL rule, and the reason says so
    older = causal_check(0.5, 0.001, 0.3, aligned)
    assert older.necessity_rule == "kl" and older.necessity_share is None and not older.necessity_holds
    assert "judged on the KL" in older.reason
    assert causal_check(0.5, 0.001, 0.002, aligned).necessity_holds


def test_removal_measures_the_part_of_the_change_a_patch_takes_away() -> None:
    import torch

    from logitsdump.localize.passes import removal

    generator = torch.Generator().manual_seed(1)
    base = torch.randn(500, generator=generator) * 3
    change = torch.randn(500, generator=generator)
    test = base + change
    assert removal(base, test, base) == pytest.approx((1.0, 1.0))  # back to the control arm: all of it removed
    assert removal(base, test, test)[1] == 0.0  # nothing removed
    assert removal(base, test, test + 5.0)[1] == pytest.approx(0.0, abs=1e-6)  # a shift of every logit is no change
    assert removal(base, test, base + 0.25 * change) == pytest.approx((1.0, 0.75))
    noise = torch.randn(500, generator=generator)
    cosine, share = removal(base, test, base + noise)  # the change gone, roundoff of its own size left
    assert share == pytest.approx(1.0, abs=0.15) and cosine < 0.9
    assert removal(base, test, test + noise)[1] == pytest.approx(0.0, abs=0.15)  # only an orthogonal change


def test_alignment_measures_the_change_of_the_logits_over_the_vocabulary() -> None:
    import torch

    from logitsdump.localize.passes import alignment

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(500, generator=generator) * 3
    change = torch.randn(500, generator=generator)
    test = base + change
    assert alignment(base, test, base + 0.5 * change) == pytest.approx((1.0, 0.5), abs=0.02)
    centred = alignment(base, test, base + 0.5 * change + 7.0)  # a shift of every logit is no change
    assert centred == pytest.approx(alignment(base, test, base + 0.5 * change))
    cosine, share = alignment(base, test, base - change)
    assert cosine == pytest.approx(-1.0) and share == pytest.approx(-1.0)
    assert alignment(base, test, base) == (0.0, 0.0)
    other = torch.randn(500, generator=generator)
    assert abs(alignment(base, test, base + other)[0]) < 0.2  # an unrelated change: no direction in common


def test_judge_heads_names_the_head_that_stands_out() -> None:
    band = [0.01] * 4
    head, scores, _reason = judge_heads([0.01, 1.0, 0.012, 0.01], [0.02, 1.0, 0.02, 0.02], band, [0.02] * 4)
    assert head == 1 and scores[1] == pytest.approx(100.0)
    head, _scores, reason = judge_heads([0.5, 0.6, 0.5, 0.5], [0.6] * 4, band, [0.02] * 4)
    assert head is None and "none standing out" in reason
    head, _scores, reason = judge_heads(band, [0.02] * 4, band, [0.02] * 4)
    assert head is None and "output projection" in reason


def test_msprobe_config_scopes_the_culprit_and_its_step() -> None:
    config = msprobe.culprit_config([("model.layers.3.self_attn", "LlamaAttention")], step=5)
    assert config["task"] == "tensor" and config["level"] == "mix" and config["step"] == [5]
    assert config["rank"] == []
    assert config["tensor"]["scope"] == ["Module.model.layers.3.self_attn.LlamaAttention.forward.0"] * 2
    whole = msprobe.whole_model_config([4, 2, 4])
    assert whole["level"] == "L0" and whole["step"] == [2, 4] and whole["statistics"]["scope"] == []

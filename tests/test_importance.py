import dataclasses

import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.importance import (
    CED,
    BlockInfluence,
    BlockScores,
    CalibrationSet,
    RandomImportance,
    RankVote,
    UniformImportance,
    make_importance,
    naive_ced,
)
from entpruner_sdk.importance.ced import combine_timesteps
from entpruner_sdk.importance.entropy import GAUSSIAN_CONSTANT, EntropyAccumulator
from entpruner_sdk.importance.frozen import FrozenRanking
from entpruner_sdk.importance.vote import vote
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import objective_for
from tests.conftest import randomized, tiny_config

CPU = torch.device("cpu")


def setup(family="dit", depth=5):
    model = randomized(DiffusionTransformer(tiny_config(family, depth=depth)))
    objective = objective_for(model)
    calibration = CalibrationSet.build(load_data("digits"), objective, per_class=3, times=3)
    return model, objective, calibration


def make_identity(model, block):
    with torch.no_grad():  # zero gates: the block adds nothing to its residual stream
        model.blocks[block].adaLN_modulation[-1].weight.zero_()
        model.blocks[block].adaLN_modulation[-1].bias.zero_()


@pytest.mark.parametrize("family", ["dit", "sit"])
@pytest.mark.parametrize("output", ["prediction", "denoised", "clipped", "sampler"])
@pytest.mark.parametrize("estimator", ["sample", "diagonal"])
def test_ced_is_zero_for_an_identity_block_and_positive_otherwise(family, output, estimator):
    model, objective, calibration = setup(family)
    make_identity(model, 2)
    scores = CED(output, estimator, sampler_steps=2).score(model, objective, calibration, CPU)
    assert scores.scores[2] == pytest.approx(0.0, abs=1e-9)
    assert all(s > 1e-6 for i, s in enumerate(scores.scores) if i != 2)
    expected_times = 1 if output == "sampler" else 3
    assert all(len(row) == expected_times for row in scores.per_timestep)


@pytest.mark.parametrize("family", ["dit", "sit"])
@pytest.mark.parametrize("output", ["prediction", "denoised", "clipped"])
@pytest.mark.parametrize("estimator", ["sample", "diagonal"])
def test_prefix_cached_ced_equals_the_naive_computation(family, output, estimator):
    model, objective, calibration = setup(family)
    cached = CED(output, estimator, batch_size=7).score(model, objective, calibration, CPU)
    naive = naive_ced(model, objective, calibration, CPU, output, estimator)
    assert cached.scores == pytest.approx(naive, rel=1e-4, abs=1e-7)  # fp32 batch rounding


def test_clipped_ced_bounds_the_estimate_by_the_data_range():
    model, objective, calibration = setup("dit")
    low, high = calibration.value_range
    assert low.shape == (1, 1, 1, 1) and -1.0 <= float(low) < float(high) <= 1.0
    shard = calibration.shard(1, 2)  # a shard keeps the whole set's range (same on every rank)
    assert all(torch.equal(a, b) for a, b in zip(shard.value_range, calibration.value_range))
    _, batch = next(calibration.batches(objective, CPU))
    batch = dataclasses.replace(batch, t=batch.t.clone().fill_(objective.num_timesteps - 1))
    wild = torch.randn(len(batch.t), 2 * model.config.in_channels, 8, 8) * 5
    plain = CED("denoised")._x(objective, wild, batch, calibration.value_range)
    clipped = CED("clipped")._x(objective, wild, batch, calibration.value_range)
    assert plain.abs().max() > 10  # 1 / sqrt(alpha_bar) amplifies the noise prediction
    assert float(clipped.min()) >= float(low) and float(clipped.max()) <= float(high)


def test_ced_is_deterministic_and_reports_entropies():
    model, objective, calibration = setup()
    a = CED().score(model, objective, calibration, CPU)
    b = CED().score(model, objective, calibration, CPU)
    assert a.scores == b.scores
    assert len(a.details["entropy_full"]) == 3 and a.kept_blocks == [0, 1, 2, 3, 4]
    assert a.as_table()[0]["block"] == 0 and len(a.as_table()[0]["per_timestep"]) == 3


def test_normalized_weighting_gives_every_timestep_an_equal_say():
    # block 0 dominates the loud timestep; block 1 leads the two quiet ones
    per_timestep = [[100.0, 0.1, 0.1], [1.0, 0.3, 0.3], [1.0, 0.0, 0.0]]
    mean = combine_timesteps(per_timestep, "mean")
    normalized = combine_timesteps(per_timestep, "normalized")
    assert mean[0] > mean[1] and normalized[1] > normalized[0]
    assert sum(normalized) == pytest.approx(1.0)  # each timestep's weights sum to 1, averaged
    assert combine_timesteps([[0.0, 1.0], [0.0, 3.0]], "normalized") == [0.125, 0.375]
    model, objective, calibration = setup()
    make_identity(model, 2)
    scores = CED(weighting="normalized").score(model, objective, calibration, CPU)
    assert scores.scores == pytest.approx(combine_timesteps(scores.per_timestep, "normalized"))
    assert scores.scores[2] == pytest.approx(0.0, abs=1e-9)
    assert scores.details["weighting"] == "normalized"
    with pytest.raises(ValueError, match="weighting"):
        CED(weighting="max")


def test_entropy_estimators_on_known_gaussians():
    torch.manual_seed(0)
    labels = torch.arange(2).repeat_interleave(4000)
    scale = torch.where(labels == 0, 1.0, 3.0)[:, None]
    sample_acc = EntropyAccumulator("sample", 2, 1024)  # many elements: small bias in log std
    sample_acc.update(torch.randn(8000, 1024) * scale, labels)
    outputs = torch.randn(8000, 16) * scale
    expected = 0.5 * (0.0 + torch.log(torch.tensor(3.0))) + GAUSSIAN_CONSTANT
    assert sample_acc.entropy() == pytest.approx(float(expected), abs=0.03)
    diagonal = EntropyAccumulator("diagonal", 2, 16)
    diagonal.update(outputs[:3000], labels[:3000])
    diagonal.update(outputs[3000:], labels[3000:])  # statistics merge across updates
    assert diagonal.entropy() == pytest.approx(16 * float(expected), abs=0.1)


def test_block_influence_is_zero_for_an_identity_block():
    model, objective, calibration = setup()
    make_identity(model, 3)
    scores = BlockInfluence().score(model, objective, calibration, CPU)
    assert scores.scores[3] == pytest.approx(0.0, abs=1e-6)
    assert min(scores.scores) == scores.scores[3]
    assert BlockInfluence().select(scores, 1, protected=[0, 4]) == [3]
    # used alone, a criterion takes its device by name, as every other compute path does
    assert BlockInfluence().score(model, objective, calibration, "cpu").scores == scores.scores


def test_selection_respects_protection_and_the_baselines():
    model, objective, calibration = setup(depth=8)
    random_scores = RandomImportance(seed=1).score(model, objective, calibration, CPU)
    chosen = RandomImportance().select(random_scores, 3, protected=[0, 7])
    assert len(chosen) == 3 and not {0, 7} & set(chosen)
    uniform = UniformImportance()
    assert uniform.select(uniform.score(model, objective, calibration, CPU), 3, [0, 7]) == [2, 4, 6]
    with pytest.raises(ValueError, match="only 6 are unprotected"):
        uniform.select(uniform.score(model, objective, calibration, CPU), 7, [0, 7])
    with pytest.raises(ValueError, match="unknown importance"):
        make_importance("magnitude")


def test_planned_uniform_removes_progressively_to_the_one_shot_set():
    full = BlockScores("uniform", [0.0] * 12, list(range(12)))
    one_shot = UniformImportance().select(full, 8, [0, 11])
    assert sorted(set(range(12)) - set(one_shot)) == [0, 3, 8, 11]
    planned, kept = UniformImportance(range(12), 4), list(range(12))
    for count in (3, 3, 2):  # three decisions, as an adaptive schedule might take them
        removed = planned.select(BlockScores("uniform", [0.0] * len(kept), kept), count, [0, 11])
        assert len(removed) == count and set(removed) <= set(one_shot)
        kept = [b for b in kept if b not in removed]
    assert kept == [0, 3, 8, 11]
    # unplanned, the same decisions re-space over what is left and drift
    unplanned, kept = UniformImportance(), list(range(12))
    for count in (3, 3, 2):
        removed = unplanned.select(BlockScores("uniform", [0.0] * len(kept), kept), count,
                                   [0, 11])
        kept = [b for b in kept if b not in removed]
    assert kept != [0, 3, 8, 11]
    with pytest.raises(ValueError, match="both"):
        UniformImportance(range(12))


def test_frozen_ranking_scores_once_and_keeps_the_per_timestep_table():
    """The default (CED ranked once, on the teacher): later decisions get the teacher's scores
    and per-timestep rows for the blocks still present, without scoring the student again."""
    model, objective, calibration = setup(depth=5)
    calls = []

    class Counting(CED):
        def score(self, *args, **kwargs):
            calls.append(1)
            return super().score(*args, **kwargs)

    frozen = FrozenRanking(Counting())
    first = frozen.score(model, objective, calibration, CPU)
    student = model.keep_blocks([0, 2, 4])
    later = frozen.score(student, objective, calibration, CPU)
    assert len(calls) == 1
    assert later.kept_blocks == [0, 2, 4]
    assert later.scores == [first.scores[i] for i in (0, 2, 4)]
    assert later.per_timestep == [first.per_timestep[i] for i in (0, 2, 4)]
    assert all(len(row["per_timestep"]) == 3 for row in later.as_table())  # 3 timesteps


def test_rank_vote_sums_places_and_breaks_ties_by_z_scores():
    # places (least important first): a -> [0, 1, 2, 3], b -> [3, 2, 0, 1]; sums [3, 3, 2, 4]
    a, b = [1.0, 2.0, 3.0, 4.0], [40.0, 22.0, 10.0, 20.0]
    scores = vote([a, b])
    assert [int(s) for s in scores] == [3, 3, 2, 4]
    # blocks 0 and 1 tie on places; block 1's summed z-score is the lower, so it goes first
    assert sorted(range(4), key=lambda i: scores[i]) == [2, 1, 0, 3]
    assert all(0 <= s - int(s) < 1 for s in scores)  # the tie-break never outweighs a place
    assert vote([a, [5 * x for x in a]]) == vote([a, a])  # the scale of a criterion is ignored
    with pytest.raises(ValueError, match="same blocks"):
        vote([a, b[:3]])


def test_rank_vote_of_ced_and_bi_leaves_protected_blocks_out_of_the_vote():
    model, objective, calibration = setup(depth=6)
    protected = {0, 5}
    ced_bi = make_importance("ced+bi", protected=protected)
    assert isinstance(ced_bi, RankVote) and ced_bi.name == "ced+bi"
    scores = ced_bi.score(model, objective, calibration, CPU)
    ced_scores = CED().score(model, objective, calibration, CPU)
    ced, bi = ced_scores.scores, BlockInfluence().score(model, objective, calibration, CPU).scores
    assert scores.details == {"ced": ced, "bi": bi}
    assert scores.per_timestep == ced_scores.per_timestep  # the report keeps CED's table
    candidates = [1, 2, 3, 4]
    assert [scores.scores[i] for i in candidates] == vote([[s[i] for i in candidates]
                                                           for s in (ced, bi)])
    assert min(scores.scores[i] for i in protected) > max(scores.scores[i] for i in candidates)
    assert ced_bi.select(scores, 2, protected) == sorted(
        sorted(candidates, key=lambda i: scores.scores[i])[:2])
    with pytest.raises(ValueError, match="two criteria"):
        RankVote([CED()])

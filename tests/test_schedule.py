import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CalibrationSet
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import NoisedBatch, objective_for
from entpruner_sdk.schedule import (
    LatencyModel,
    Schedule,
    ScheduleConfig,
    ScheduleState,
    ntk_condition_number,
    rank,
    rank_vote,
    zico,
)
from tests.conftest import randomized, tiny_config


def test_adaptive_plan_waits_votes_and_forces():
    schedule = Schedule(ScheduleConfig(interval=10, k_max=2, prune_fraction=0.5,
                                       recovery_window=5), total_steps=100)
    assert schedule.decision_points() == [0, 10, 20, 30, 40, 50]
    state = ScheduleState()
    assert not schedule.plan(5, 4, state).due  # not a decision point
    first = schedule.plan(0, 4, state)
    assert first.due and (first.k_min, first.k_max) == (0, 2) and not first.forced
    # after a removal the loss must come back within 10% of its earlier level
    state.losses.extend([1.0] * 10 + [2.0] * 10)
    state.last_removal_step, state.pre_removal_loss = 10, 1.0
    assert not schedule.plan(20, 4, state).due
    state.losses.extend([1.05] * 10)
    assert schedule.plan(30, 4, state).due
    # 4 blocks owed with two decision points left (40, 50): both must remove 2
    forced = schedule.plan(40, 4, ScheduleState([5.0] * 40, 30, 1.0))
    assert forced.due and forced.k_min == 2 and forced.forced
    assert not schedule.plan(60, 1, state).due  # past the deadline: handled at the end
    assert not schedule.plan(0, 0, state).due  # nothing left to remove


def test_one_shot_plan_removes_everything_at_step_zero():
    schedule = Schedule(ScheduleConfig(kind="one-shot"), total_steps=100)
    plan = schedule.plan(0, 5, ScheduleState())
    assert plan.due and plan.k_min == plan.k_max == 5
    assert not schedule.plan(50, 5, ScheduleState()).due
    with pytest.raises(ValueError, match="adaptive"):
        ScheduleConfig(kind="cosine")


def test_rank_vote():
    assert rank([3.0, 1.0, 2.0]) == [2, 0, 1]
    assert rank([3.0, 1.0, 2.0], higher_is_better=True) == [0, 2, 1]
    votes = rank_vote(latency=[3.0, 2.0, 1.0], ntk=[1.0, 2.0, 3.0], zico_scores=[3.0, 2.0, 1.0])
    assert votes == [2.0, 2.0, 2.0]  # time favours k=2, both proxies favour k=0
    assert rank_vote([2.0, 1.0], [1.0, 5.0], [1.0, 0.5])[1] < 2


def test_proxies_are_finite_and_deterministic():
    model = randomized(DiffusionTransformer(tiny_config("sit")))
    objective = objective_for(model)
    calibration = CalibrationSet.build(load_data("digits"), objective, per_class=2, times=2)
    batch = next(iter(calibration.batches(objective, torch.device("cpu"), batch_size=6)))[1]
    ntk = ntk_condition_number(model, objective, batch)
    assert ntk >= 1 and ntk == ntk_condition_number(model, objective, batch)
    batches = [b for _, b in calibration.batches(objective, torch.device("cpu"), 6)][:2]
    assert abs(zico(model, objective, batches)) > 0
    with pytest.raises(ValueError, match="two batches"):
        zico(model, objective, batches[:1])


def test_latency_model_grows_with_depth():
    model = randomized(DiffusionTransformer(tiny_config(depth=6, hidden_size=64)))
    x = torch.randn(16, 1, 8, 8)
    batch = NoisedBatch(x, x, x, torch.arange(16), torch.arange(16) % 10)
    latency = LatencyModel.measure(model, batch)
    assert latency.per_block > 0 and latency(6) > latency(3)
    assert latency.speedup(6, 3) > 1


def test_tied_votes_go_to_the_faster_candidate():
    from entpruner_sdk.compress.decide import Candidate, choose

    # proxies prefer the deeper model, time the shallower: every k totals 2.0
    votes = rank_vote(latency=[3.0, 2.0, 1.0], ntk=[1.0, 2.0, 3.0], zico_scores=[3.0, 2.0, 1.0])
    candidates = [Candidate(k, list(range(k)), 6 - k, 1.0, vote=v)
                  for k, v in zip((0, 1, 2), votes)]
    assert len(set(votes)) == 1
    assert choose(candidates).k == 2
    candidates[1].vote = 1.0  # a real winner still wins
    assert choose(candidates).k == 1

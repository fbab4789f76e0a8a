"""One pruning decision: score the blocks, build the candidates k = k_min..k_max, vote."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from entpruner_sdk.importance import CalibrationSet, Importance
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import NoisedBatch, Objective
from entpruner_sdk.schedule import LatencyModel, SchedulePlan, ntk_condition_number, rank_vote, zico


@dataclass
class Candidate:
    """One option at a decision: remove the ``k`` least important blocks (``removed``),
    with its measured latency, zero-shot proxies and rank vote (lower votes win)."""

    k: int
    removed: list[int]
    depth: int
    latency_s: float
    ntk_condition: float | None = None
    zico: float | None = None
    vote: float | None = None


@dataclass
class Decision:
    """One decision point as the report logs it: the step, the loss, what the schedule
    allowed (``plan``), the importance scores, every candidate and the one chosen."""

    step: int
    loss: float | None
    plan: dict[str, Any]
    scores: list[dict[str, Any]]
    candidates: list[Candidate] = field(default_factory=list)
    chosen_k: int = 0
    removed: list[int] = field(default_factory=list)
    importance_seconds: float = 0.0
    proxy_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The decision as plain JSON data."""
        return asdict(self)


@dataclass
class ProxyBatches:
    """Fixed batches for the zero-shot proxies, drawn once from the calibration set."""

    ntk: NoisedBatch
    zico: list[NoisedBatch]

    @classmethod
    def build(cls, calibration: CalibrationSet, objective: Objective, samples: int,
              device: torch.device, seed: int) -> ProxyBatches:
        """``samples`` noised images for the NTK and two batches for ZiCo, drawn from
        ``calibration`` with ``seed``."""
        generator = torch.Generator().manual_seed(seed + 1)

        def draw(count: int) -> NoisedBatch:
            index = torch.randperm(len(calibration), generator=generator)[:count]
            times = calibration.times[torch.randint(0, len(calibration.times), (len(index),),
                                                    generator=generator)]
            x0, noise = calibration.images[index].to(device), calibration.noise[index].to(device)
            t = times.to(device)
            return NoisedBatch(x0, noise, objective.add_noise(x0, noise, t), t,
                               calibration.labels[index].to(device))

        return cls(draw(samples), [draw(samples), draw(samples)])


def decide(step: int, student: DiffusionTransformer, objective: Objective,
           importance: Importance, calibration: CalibrationSet, proxies: ProxyBatches,
           latency: LatencyModel, plan: SchedulePlan, protected: list[int],
           vote_weights: tuple[float, float, float], device: torch.device,
           loss: float | None) -> Decision:
    """Score blocks on the current student and pick how many to remove now."""
    start = time.perf_counter()
    scores = importance.score(student, objective, calibration, device)
    decision = Decision(step, loss, asdict(plan), scores.as_table(),
                        importance_seconds=time.perf_counter() - start)
    start = time.perf_counter()
    for k in range(plan.k_min, plan.k_max + 1):
        removed = importance.select(scores, k, protected)
        candidate = Candidate(k, removed, student.depth - k, latency(student.depth - k))
        if plan.k_max > plan.k_min:  # a vote is needed only between several candidates
            model = _without(student, removed)
            candidate.ntk_condition = ntk_condition_number(model, objective, proxies.ntk)
            candidate.zico = zico(model, objective, proxies.zico)
        decision.candidates.append(candidate)
    if len(decision.candidates) > 1:
        votes = rank_vote([c.latency_s for c in decision.candidates],
                          [c.ntk_condition for c in decision.candidates],
                          [c.zico for c in decision.candidates], vote_weights)
        for candidate, vote in zip(decision.candidates, votes):
            candidate.vote = vote
    best = choose(decision.candidates)
    decision.chosen_k, decision.removed = best.k, best.removed
    decision.proxy_seconds = time.perf_counter() - start
    student.zero_grad(set_to_none=True)
    return decision


def choose(candidates: list[Candidate]) -> Candidate:
    """The lowest vote wins; ties go to the faster candidate (more removed).

    The heaviest-weighted criterion, measured time, prefers the faster one. With weights
    (1, 0.5, 0.5) ties are the rule, not the exception: when NTK and ZiCo both prefer the
    deeper model (they usually do), every k totals the same. Breaking them toward k = 0 made
    the schedule wait for the deadline and remove everything as late as possible, leaving the
    least recovery.
    """
    return min(candidates, key=lambda c: (c.vote or 0.0, -c.k))


def _without(model: DiffusionTransformer, removed: list[int]) -> DiffusionTransformer:
    if not removed:
        return model
    keep = [i for i, block in enumerate(model.kept_blocks) if block not in set(removed)]
    return model.keep_blocks(keep)

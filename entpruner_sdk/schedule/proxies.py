"""Zero-shot proxies that judge a candidate architecture without training it.

- NTK condition number: lambda_max / lambda_min of the empirical NTK K = J J^T, J holding the
  per-sample gradients of the loss; lower means better-conditioned, easier to train.
- ZiCo: sum over parameter tensors of log(sum(mean |g|) / std(g)) with statistics taken
  across batches; higher means larger, more consistent gradients.
- Latency: seconds per forward of a depth, from a linear model t(d) = a + b * d fitted to
  measurements once at the start, so decisions are reproducible on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import NoisedBatch, Objective
from entpruner_sdk.utils.device import arithmetic, autocast
from entpruner_sdk.utils.ranking import rank
from entpruner_sdk.utils.timing import interleaved_medians


def _trainable(model: DiffusionTransformer) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def ntk_condition_number(model: DiffusionTransformer, objective: Objective, batch: NoisedBatch
                         ) -> float:
    """Condition number of the empirical NTK over the samples of ``batch``."""
    model = model.train()
    params = _trainable(model)
    rows = []
    for one in batch.split(len(batch.y)):  # one sample at a time
        loss = objective.loss(model(one.x_t, one.t, one.y), one).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                               for g, p in zip(grads, params)]).double())
    jacobian = torch.stack(rows)
    eigenvalues = torch.linalg.eigvalsh(jacobian @ jacobian.T)
    return float(eigenvalues[-1] / eigenvalues[0].clamp(min=1e-30))


def zico(model: DiffusionTransformer, objective: Objective, batches: list[NoisedBatch]) -> float:
    """ZiCo over at least two batches."""
    if len(batches) < 2:
        raise ValueError("ZiCo needs gradients from at least two batches")
    model = model.train()
    params = _trainable(model)
    per_batch = []
    for batch in batches:
        loss = objective.loss(model(batch.x_t, batch.t, batch.y), batch).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        per_batch.append([g.detach().double() if g is not None else None for g in grads])
    total = 0.0
    for index in range(len(params)):
        stack = [grads[index] for grads in per_batch]
        if any(g is None for g in stack):
            continue
        g = torch.stack(stack)
        std = g.std(dim=0)
        mask = std > 0
        if mask.any():
            ratio = (g.abs().mean(dim=0)[mask] / std[mask]).sum()
            if ratio > 0:
                total += math.log(float(ratio))
    return total


@dataclass
class LatencyModel:
    """Forward latency as a + b * depth, measured on the device the model runs on, in the
    arithmetic it samples with there (``arithmetic``: bf16 autocast on a GPU by default, where
    blocks take a smaller share of the time than in fp32)."""

    intercept: float
    per_block: float
    arithmetic: str = "fp32"  # what models measured before it was recorded ran in

    def __call__(self, depth: int) -> float:
        return self.intercept + self.per_block * depth

    @classmethod
    def measure(cls, model: DiffusionTransformer, batch: NoisedBatch, repeats: int = 5
                ) -> LatencyModel:
        """Time the full model and a one-block model on ``batch``, side by side."""
        small = model.keep_blocks([0]).eval()
        model = model.eval()

        device = batch.x_t.device

        @torch.no_grad()
        def run(m):
            with autocast(device):
                return m(batch.x_t, batch.t, batch.y)

        times = interleaved_medians({"full": lambda: run(model), "one": lambda: run(small)},
                                    repeats=repeats)
        per_block = max(times["full"] - times["one"], 1e-9) / max(model.depth - 1, 1)
        return cls(max(times["one"] - per_block, 0.0), per_block, arithmetic(device))

    def speedup(self, depth_from: int, depth_to: int) -> float:
        """Predicted speedup of a forward at ``depth_to`` blocks over one at ``depth_from``."""
        return self(depth_from) / self(depth_to)


def rank_vote(latency: list[float], ntk: list[float], zico_scores: list[float],
              weights: tuple[float, float, float] = (1.0, 0.5, 0.5)) -> list[float]:
    """score = w_t * rank_time + w_n * rank_NTK + w_z * rank_ZiCo; the lowest total wins."""
    r_time, r_ntk, r_zico = rank(latency), rank(ntk), rank(zico_scores, higher_is_better=True)
    return [weights[0] * a + weights[1] * b + weights[2] * c
            for a, b, c in zip(r_time, r_ntk, r_zico)]

"""Parity of an export against the PyTorch model it came from, on random valid inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.export.graphs import (
    GuidedDenoiser,
    cpu_reference,
    example_inputs,
    example_latents,
)
from entpruner_sdk.export.runtime import ExportedDenoiser
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.device import exact_fp32, mixed_precision

# Relative error allowed per precision: max |export - torch| / max |torch|.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


class ParityError(RuntimeError):
    """An export's outputs differ from PyTorch's by more than its tolerance."""


@dataclass
class ParityCheck:
    """One comparison of an exported graph with PyTorch at one batch size: the largest
    absolute error, that error relative to the largest reference output, and the bound."""

    graph: str
    batch: int
    max_abs_error: float
    relative_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the relative error is within the tolerance."""
        return self.relative_error <= self.tolerance

    def to_dict(self) -> dict:
        """The check as JSON data, ``passed`` included (the manifest's ``parity``)."""
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, document: dict) -> ParityCheck:
        """The inverse of ``to_dict`` (``passed`` is derived, so it is not read)."""
        return cls(**{k: v for k, v in document.items() if k != "passed"})


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max abs reference) in float64."""
    output, reference = output.double().cpu(), reference.double().cpu()
    worst = (output - reference).abs().max().item()
    return worst, worst / max(reference.abs().max().item(), 1e-12)


@torch.no_grad()
def check_parity(model: DiffusionTransformer, runtime: ExportedDenoiser,
                 precision: str = "fp32", batches: tuple[int, ...] = (1, 3, 8),
                 seed: int = 0) -> list[ParityCheck]:
    """Compare ``runtime`` with the fp32 PyTorch ``model`` at several batch sizes, for the
    denoiser and (when the export has one) the guidance graph; ``model`` is left as it was."""
    reference = cpu_reference(model)
    guided_reference = GuidedDenoiser(reference) if runtime.has_guided_graph else None
    checks = []
    # TF32 off while comparing (and back after): resolve_device turns it on for the process, a
    # GPU runtime built on PyTorch (AOTInductor) can read that switch, and TF32 rounds matmul
    # inputs to 10 mantissa bits (2^-11, five times the fp32 bound)
    with exact_fp32("cuda" if torch.cuda.is_available() else "cpu"):
        for i, batch in enumerate(batches):
            checks += _check_batch(runtime, reference, guided_reference, batch, precision,
                                   seed + i, seed + 100 + i)
    return checks


def _check_batch(runtime: ExportedDenoiser, reference: DiffusionTransformer,
                 guided_reference: GuidedDenoiser | None, batch: int, precision: str,
                 seed: int, guided_seed: int) -> list[ParityCheck]:
    """The denoiser's check (and the guidance graph's) at one batch size."""
    x, t, y = example_inputs(reference, batch, seed=seed)
    worst, rel = relative_error(runtime(x, t, y), reference(x, t, y))
    checks = [ParityCheck("denoiser", batch, worst, rel, TOLERANCE[precision])]
    if guided_reference is not None:
        inputs = example_inputs(reference, batch, guided=True, seed=guided_seed)
        worst, rel = relative_error(runtime.guided(*inputs), guided_reference(*inputs))
        checks.append(ParityCheck("guided", batch, worst, rel, TOLERANCE[precision]))
    return checks


@torch.no_grad()
def check_decoder_parity(space: LatentSpace, decoder: Any, config: TransformerConfig,
                         batches: tuple[int, ...] = (1, 3),
                         seed: int = 0) -> list[ParityCheck]:
    """Compare an exported VAE decoder with the PyTorch VAE (``space``, a ``LatentSpace``)
    on random latents; both run in fp32, the VAE on whichever device it was opened."""
    checks = []
    for i, batch in enumerate(batches):
        latents = example_latents(config.in_channels, config.input_size, batch, seed + i)
        with mixed_precision("off"):  # else a VAE on a GPU decodes in bf16: 1e-2 off
            reference = space.decode(latents)
        worst, rel = relative_error(decoder.decode(latents), reference)
        checks.append(ParityCheck("decoder", batch, worst, rel, TOLERANCE["fp32"]))
    return checks


def require_parity(checks: list[ParityCheck], what: str) -> None:
    """Raise ``ParityError``, naming each failed check and the ways out, unless all pass."""
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = ", ".join(f"{c.graph} batch {c.batch}: {c.relative_error:.2e} > {c.tolerance:.0e}"
                          for c in failed)
        raise ParityError(
            f"{what} does not match PyTorch ({lines}); nothing was written. Try another "
            "exporter (exporter='torchscript'), a higher precision, or pass verify=False to "
            "keep it anyway"
        )


def format_checks(checks: list[ParityCheck]) -> str:
    """The checks as the table ``export --verify`` prints."""
    rows = ["graph     batch  max abs error  relative error  tolerance  ok"]
    rows += [f"{c.graph:<9} {c.batch:>5}  {c.max_abs_error:13.2e}  {c.relative_error:14.2e}  "
             f"{c.tolerance:9.0e}  {'yes' if c.passed else 'NO'}" for c in checks]
    return "\n".join(rows)

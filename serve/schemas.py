"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class GenerateRequest(BaseModel):
    """One generation request: ``num_images`` images of every label in ``class_labels``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model name (default: the first served model)")
    # strict: JSON true is not class 1, nor 1.0 class 1
    class_labels: list[StrictInt | str] = Field(
        ..., min_length=1, description="class of each image: an id, or a name for a model "
                                       "that records its classes' names (GET /v1/models)")
    num_images: int = Field(1, ge=1, description="images per label")
    seed: int = Field(0, ge=0, lt=2**63, description="same seed, same images, batched or not")
    sampler: str | None = Field(None, description="ddpm/ddim/dpm-solver++ (DiT), "
                                "euler/heun/euler-maruyama/heun-sde/dopri5 (SiT); default: the "
                                "model's")
    steps: int | None = Field(None, ge=1, description="sampling steps (default: the model's; "
                                 "dopri5: the most it may take)")
    cfg_scale: float | None = Field(None, ge=0.0, allow_inf_nan=False,
                                    description="guidance scale (1 = none)")
    sampler_settings: dict[str, float | str | None] | None = Field(
        None, description="a SiT sampler's settings, named as the SiT reference's sample.py "
                          "flags: atol and rtol (dopri5); diffusion_form, diffusion_norm, "
                          "last_step (null: none) and last_step_size (euler-maruyama, "
                          "heun-sde); default: the reference's")
    output_format: Literal["png", "array"] = Field(
        "png", description="png: base64 PNG per image; array: base64 float32 [N, C, H, W]")


class Timing(BaseModel):
    """Where a request's time went: waiting for its batch, computing it, in all."""

    queue_ms: float
    compute_ms: float
    total_ms: float
    batch_images: int = Field(..., description="images in the batch this request ran in")
    batch_requests: int


class ArrayPayload(BaseModel):
    """The images as one raw array ([N, C, H, W] float32 in [-1, 1]), for
    ``output_format="array"``."""

    shape: list[int]
    dtype: Literal["float32"] = "float32"
    range: list[float] = [-1.0, 1.0]
    data: str = Field(..., description="base64 of the little-endian float32 array")


class GenerateResponse(BaseModel):
    """The images of a ``/v1/generate`` request, with every setting that made them."""

    model: str
    class_labels: list[int] = Field(..., description="class id of each image")
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    sampler_settings: dict[str, float | str] = Field(
        ..., description="the settings that governed the sampler (none for DiT's or SiT's "
                         "fixed-step ODE samplers)")
    model_calls: int = Field(..., description="denoiser calls the sampler made for the batch "
                                              "this request ran in (dopri5: 2 to pick its "
                                              "first step, then 6 a step its tolerances "
                                              "needed)")
    images_png: list[str] | None = Field(None, description="base64 PNG, one per image")
    array: ArrayPayload | None = None
    timing: Timing

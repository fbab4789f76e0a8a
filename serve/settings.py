"""Server limits and batching knobs, as plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSettings:
    """Everything that bounds what one server does.

    ``max_batch_images``: images one batch may hold (1 turns batching off);
    ``max_wait_ms``: how long the first request of a batch waits for company;
    ``max_queue``: requests waiting beyond which the server answers 503 + Retry-After.
    """

    max_batch_images: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_images_per_request: int = 16
    max_steps: int = 250
    max_cfg_scale: float = 20.0
    max_body_bytes: int = 64 * 1024
    request_timeout_s: float = 120.0
    retry_after_s: int = 1
    api_key: str | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_images < 1 or self.max_queue < 1 or self.max_images_per_request < 1:
            raise ValueError("max_batch_images, max_queue and max_images_per_request must be >= 1")
        if self.max_images_per_request > self.max_batch_images > 1:
            # A request never splits across batches, so one must fit in a batch.
            self.max_batch_images = self.max_images_per_request

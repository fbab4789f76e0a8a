"""The DiT / SiT denoiser: one transformer, two forward contracts.

The model is split into three stages so that pruning code can reuse them without copying
weights: ``embed`` (patches + conditioning), ``run_blocks`` (any contiguous range of blocks,
any of them skipped) and ``head`` (final layer + unpatchify + family contract).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.layers import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed_2d,
)

# where ``sampling.compiled`` keeps a model's torch.compile'd forwards, one per mode
COMPILED_CACHE = "_compiled"


class DiffusionTransformer(nn.Module):
    """A DiT (diffusion, epsilon prediction) or SiT (flow, velocity prediction) backbone.

    ``model(x, t, y)`` takes images or latents x [N, C, H, W], timesteps t [N] (integers
    0..999 for DiT, floats in [0, 1] for SiT) and class labels y [N] (``num_classes`` is the
    null label) and returns [N, C_out, H, W].

    ``provenance`` records where the weights came from; ``provenance["kept_blocks"]`` holds
    the original index of every block, so a pruned model still says which blocks it kept.
    ``objective`` holds the training objective's settings (e.g. ``{"path": "gvp"}`` for SiT).
    """

    def __init__(
        self,
        config: TransformerConfig,
        provenance: dict[str, Any] | None = None,
        objective: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # Settings of the objective the weights were trained with (e.g. SiT's flow path).
        self.objective: dict[str, Any] = dict(objective or {})
        self.metadata: dict[str, Any] = {}
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        # Fixed, but a Parameter (not a buffer) so the key is where released files keep it.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        self.provenance: dict[str, Any] = {"kept_blocks": list(range(config.depth))}
        self.provenance.update(provenance or {})
        # where ``load`` read the model from (a bundled teacher's name or an absolute path), so
        # a compress run can record its original; not saved with the model
        self.loaded_from: str | None = None
        # a training setting, not part of the model: recompute each block's activations
        # during backward instead of holding them (``enable_gradient_checkpointing``)
        self.gradient_checkpointing = False
        self.initialize_weights()

    def __getstate__(self) -> dict[str, Any]:
        # a copy (deepcopy, pickle) leaves out the compiled forwards cached on this instance
        # (``sampling.compiled``): they wrap this module, not the copy, as torch's own
        # ``Module.compile`` state is left out
        state = super().__getstate__()
        state.pop(COMPILED_CACHE, None)
        return state

    # ------------------------------------------------------------------ construction
    def initialize_weights(self) -> None:
        """Reference initialisation: Xavier linears, N(0, 0.02) embeddings, adaLN-Zero."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        grid = int(self.config.num_patches**0.5)
        pos = sincos_pos_embed_2d(self.config.hidden_size, grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output starts at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------ properties
    @property
    def family(self) -> str:
        """``"dit"`` (diffusion, epsilon prediction) or ``"sit"`` (flow, velocity)."""
        return self.config.family

    @property
    def depth(self) -> int:
        """The number of transformer blocks it has now."""
        return len(self.blocks)

    @property
    def null_class(self) -> int:
        """The label of the unconditional class, which classifier-free guidance uses."""
        return self.y_embedder.null_class

    def extra_repr(self) -> str:  # heads the module tree that print shows
        c = self.config
        return (f"{c.family.upper()}, depth {self.depth} (kept blocks {self.kept_blocks}), "
                f"hidden {c.hidden_size}, heads {c.num_heads}, patch {c.patch_size}, input "
                f"{c.in_channels}x{c.input_size}x{c.input_size}, classes {c.num_classes}")

    @property
    def kept_blocks(self) -> list[int]:
        """Original index of every block of this model."""
        return list(self.provenance["kept_blocks"])

    def enable_gradient_checkpointing(self, enabled: bool = True) -> DiffusionTransformer:
        """Keep only each block's input for backward and recompute the rest when the gradient
        needs it: activation memory falls from all of every block's to one block's plus the
        block inputs, for about one more forward pass of compute. Applies in training mode
        with gradients on; sampling and export are unaffected."""
        self.gradient_checkpointing = enabled
        return self

    # ------------------------------------------------------------------ forward stages
    def embed(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens entering block 0 and the conditioning vector c = t_embed(t) + y_embed(y)."""
        self._check_inputs(x, t, y)
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        return tokens, c

    def run_blocks(
        self,
        h: torch.Tensor,
        c: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        skip_blocks: Iterable[int] = (),
    ) -> torch.Tensor:
        """Run blocks ``start..stop-1``; a skipped block is the identity (its residual path)."""
        skip = set(skip_blocks)
        for index in range(start, self.depth if stop is None else stop):
            if index not in skip:
                h = self._block(index, h, c)
        return h

    def _block(self, index: int, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        block = self.blocks[index]
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # non-reentrant: works under DDP and autocast, and with inputs that need no grad
            return torch.utils.checkpoint.checkpoint(block, h, c, use_reentrant=False)
        return block(h, c)

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Final layer, unpatchify, and the family's output contract."""
        out = self.unpatchify(self.final_layer(h, c))
        if self.family == "sit" and self.config.learn_sigma:
            out = out[:, : self.config.in_channels]  # SiT keeps the velocity only
        return out

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        skip_blocks: Iterable[int] = (),
        return_block_inputs: bool = False,
    ) -> torch.Tensor:
        if return_block_inputs:  # lets a DistributedDataParallel wrapper reach this path
            return self.forward_with_block_inputs(x, t, y)
        h, c = self.embed(x, t, y)
        return self.head(self.run_blocks(h, c, skip_blocks=skip_blocks), c)

    def forward_with_block_inputs(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Output, the hidden state entering each block (plus the one leaving the last), and c."""
        h, c = self.embed(x, t, y)
        states = [h]
        for index in range(self.depth):
            h = self._block(index, h, c)
            states.append(h)
        return self.head(h, c), states, c

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, p*p*C] -> [N, C, H, W]."""
        p, channels = self.config.patch_size, self.config.out_channels
        side = self.config.input_size // p  # static, so traced exports keep no Python float
        x = x.reshape(x.shape[0], side, side, p, p, channels)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], channels, side * p, side * p)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input has shape {tuple(x.shape)}, but this model takes [N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}]; resize the data or load a matching model"
            )
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"t and y must have shape [{x.shape[0]}] (one per image); got {tuple(t.shape)} "
                f"and {tuple(y.shape)}"
            )

    # ------------------------------------------------------------------ structure
    def keep_blocks(self, indices: Sequence[int]) -> DiffusionTransformer:
        """A real, smaller model keeping the given blocks (renumbered 0..k-1, order preserved).

        Weights are copied; ``provenance["kept_blocks"]`` maps each new block to its index in
        the original (unpruned) model.
        """
        keep = sorted(set(int(i) for i in indices))
        if not keep:
            raise ValueError("keep_blocks needs at least one block to keep")
        if keep[0] < 0 or keep[-1] >= self.depth:
            raise ValueError(f"block indices must lie in 0..{self.depth - 1}, got {keep}")
        provenance = copy.deepcopy(self.provenance)
        provenance["kept_blocks"] = [self.provenance["kept_blocks"][i] for i in keep]
        provenance.setdefault("original_depth", len(self.provenance["kept_blocks"]))
        smaller = DiffusionTransformer(
            self.config.replace(depth=len(keep)), provenance, self.objective
        )
        state = self.state_dict()
        renumbered = {}
        for key, value in state.items():
            if key.startswith("blocks."):
                _, old, rest = key.split(".", 2)
                if int(old) in keep:
                    renumbered[f"blocks.{keep.index(int(old))}.{rest}"] = value
            else:
                renumbered[key] = value
        smaller.load_state_dict(renumbered, strict=True)
        smaller.gradient_checkpointing = self.gradient_checkpointing
        return smaller.to(next(self.parameters()).device)


def resize_classes(model: DiffusionTransformer, num_classes: int) -> DiffusionTransformer:
    """A copy with a label embedder for ``num_classes`` classes; the null row is kept (moved
    to the end) and new rows start at the mean old class embedding (class-neutral).

    For fine-tuning or compressing on data with another class count: the data's class ``c``
    takes the model's row ``c`` while ``c`` is below the old count."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: a model needs at least 1 class")
    old = model.y_embedder.embedding_table.weight.data
    has_null = old.shape[0] == model.config.num_classes + 1
    classes = old[: model.config.num_classes]
    resized = DiffusionTransformer(model.config.replace(num_classes=num_classes),
                                   copy.deepcopy(model.provenance), model.objective)
    state = model.state_dict()
    rows = [classes[:num_classes]]
    if num_classes > len(classes):
        rows.append(classes.mean(0, keepdim=True).expand(num_classes - len(classes), -1))
    if has_null:
        rows.append(old[-1:])
    state["y_embedder.embedding_table.weight"] = torch.cat(rows)
    resized.load_state_dict(state)
    resized.gradient_checkpointing = model.gradient_checkpointing
    resized.provenance["resized_classes"] = {"from": model.config.num_classes, "to": num_classes}
    for key in ("class_names", "data_classes"):  # they described the old classes
        resized.provenance.pop(key, None)
    return resized.to(old.device)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (the fixed position embedding counts unless ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def forward_flops(config: TransformerConfig, batch: int = 1) -> int:
    """Multiply-accumulate-based FLOPs (2 per MAC) of one forward pass.

    Counts the matmuls that dominate cost: patch embedding, per-block qkv / attention /
    projection / MLP / adaLN, the final layer, and the timestep MLP.
    """
    d, tokens = config.hidden_size, config.num_patches
    mlp_hidden = int(d * config.mlp_ratio)
    patch_in = config.in_channels * config.patch_size**2
    per_block = (
        tokens * (3 * d * d + d * d + 2 * d * mlp_hidden)  # qkv, proj, fc1, fc2
        + 2 * tokens * tokens * d  # q @ k^T and attn @ v
        + 6 * d * d  # adaLN modulation (per image, not per token)
    )
    rest = (
        tokens * patch_in * d
        + 256 * d
        + d * d
        + 2 * d * d
        + tokens * d * config.patch_size**2 * config.out_channels
    )
    return 2 * batch * (config.depth * per_block + rest)

import pytest
import torch

from entpruner_sdk.models import (
    DiffusionTransformer,
    TransformerConfig,
    config_from_name,
    count_parameters,
    forward_flops,
    registry_names,
    resize_classes,
)
from entpruner_sdk.models.layers import sincos_pos_embed_2d, timestep_embedding
from tests.conftest import randomized, tiny_config

# (depth, hidden, heads) from the facts file.
FACTS = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}


def expected_shapes(depth: int, d: int, p: int, tokens: int, classes: int = 1000,
                    c_in: int = 4, c_out: int = 8) -> dict[str, tuple]:
    shapes = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, c_in, p, p), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (classes + 1, d),
        "final_layer.linear.weight": (p * p * c_out, d),
        "final_layer.linear.bias": (p * p * c_out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        shapes.update({
            f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.fc1.weight": (4 * d, d), f"blocks.{i}.mlp.fc1.bias": (4 * d,),
            f"blocks.{i}.mlp.fc2.weight": (d, 4 * d), f"blocks.{i}.mlp.fc2.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        })
    return shapes


@pytest.mark.parametrize("name", registry_names())
def test_registry_keys_and_shapes_match_the_facts(name):
    family, rest = name.split("-")
    size, patch = rest.split("/")
    depth, d, heads = FACTS[size]
    config = config_from_name(name)
    assert (config.depth, config.hidden_size, config.num_heads) == (depth, d, heads)
    assert config.family == family.lower()
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    tokens = (32 // int(patch)) ** 2
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == expected_shapes(depth, d, int(patch), tokens)


def test_xl_has_about_675m_parameters_and_a_third_of_a_block_is_adaln():
    with torch.device("meta"):
        model = DiffusionTransformer(config_from_name("DiT-XL/2"))
    assert 670e6 < count_parameters(model) < 680e6
    block = model.blocks[0]
    share = count_parameters(block.adaLN_modulation) / count_parameters(block)
    assert 0.3 < share < 0.36


def test_pruned_name_and_512px_override():
    config = config_from_name("DiT-D14/2", input_size=64)
    assert (config.depth, config.hidden_size, config.num_patches) == (14, 1152, 1024)
    with pytest.raises(ValueError, match="unknown model name"):
        config_from_name("DiT-XXL/2")
    with pytest.raises(ValueError, match="patch size"):
        config_from_name("DiT-S/3")


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        TransformerConfig(input_size=10, patch_size=4)
    with pytest.raises(ValueError, match="family"):
        TransformerConfig(family="unet")


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1, :4], torch.cos(3.0 * freqs))
    assert torch.allclose(emb[1, 4:], torch.sin(3.0 * freqs))
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_pos_embed_layout():
    pos = sincos_pos_embed_2d(8, 2)  # 4 tokens, first half encodes the column (w) index
    assert pos.shape == (4, 8)
    assert (pos[0] == pos[2])[:4].all() and not (pos[0] == pos[1])[:4].all()


def test_dit_returns_all_channels_sit_only_the_velocity(tiny_dit, tiny_sit):
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 5, 10])  # 10 is the null class
    assert tiny_dit(x, torch.tensor([0, 500, 999]), y).shape == (3, 2, 8, 8)
    assert tiny_sit(x, torch.tensor([0.0, 0.5, 1.0]), y).shape == (3, 1, 8, 8)


def test_fresh_model_is_adaln_zero():
    model = DiffusionTransformer(tiny_config())
    x = torch.randn(2, 1, 8, 8)
    h, c = model.embed(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.equal(model.run_blocks(h, c), h)  # every block is the identity at init
    assert torch.count_nonzero(model(x, torch.tensor([1, 2]), torch.tensor([0, 1]))) == 0


def test_skipping_blocks_equals_removing_them(tiny_dit):
    x, t, y = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,)), torch.randint(0, 10, (4,))
    skipped = tiny_dit(x, t, y, skip_blocks=[1, 2])
    smaller = tiny_dit.keep_blocks([0, 3])
    assert smaller.depth == 2 and smaller.kept_blocks == [0, 3]
    assert smaller.provenance["original_depth"] == 4
    assert torch.allclose(smaller(x, t, y), skipped, atol=1e-6)
    assert not torch.allclose(tiny_dit(x, t, y), skipped, atol=1e-3)
    # Pruning a pruned model keeps indices into the original.
    assert smaller.keep_blocks([1]).kept_blocks == [3]


def test_block_inputs_are_the_states_entering_each_block(tiny_sit):
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2])
    out, states, c = tiny_sit.forward_with_block_inputs(x, t, y)
    assert len(states) == tiny_sit.depth + 1
    assert torch.allclose(tiny_sit.blocks[2](states[2], c), states[3])
    resumed = tiny_sit.head(tiny_sit.run_blocks(states[2], c, start=2), c)
    assert torch.allclose(resumed, out, atol=1e-6)


def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_gradients(tiny_dit):
    x, t, y = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,)), torch.randint(0, 10, (4,))
    runs = [0] * tiny_dit.depth
    for i, block in enumerate(tiny_dit.blocks):
        block.register_forward_pre_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))

    def gradients(model):
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients(tiny_dit.train())
    assert runs == [1] * tiny_dit.depth
    recomputed = gradients(tiny_dit.enable_gradient_checkpointing())
    assert runs == [3] * tiny_dit.depth  # each block ran again in backward
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7)
    # sampling (no gradient) and evaluation mode run each block once, as before
    with torch.no_grad():
        tiny_dit(x, t, y)
    tiny_dit.eval()(x, t, y).sum().backward()
    assert runs == [5] * tiny_dit.depth
    # a smaller or resized copy keeps the setting; a fresh model starts without it
    assert tiny_dit.keep_blocks([0, 3]).gradient_checkpointing
    assert resize_classes(tiny_dit, 3).gradient_checkpointing
    assert not DiffusionTransformer(tiny_config()).gradient_checkpointing


def test_input_shape_errors(tiny_dit):
    with pytest.raises(ValueError, match=r"takes \[N, 1, 8, 8\]"):
        tiny_dit(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one per image"):
        tiny_dit(torch.randn(2, 1, 8, 8), torch.tensor([1]), torch.tensor([0, 1]))


def test_keep_blocks_validates_indices(tiny_dit):
    with pytest.raises(ValueError, match="0..3"):
        tiny_dit.keep_blocks([0, 4])
    with pytest.raises(ValueError, match="at least one"):
        tiny_dit.keep_blocks([])
    # print shows what it is above the module tree
    assert str(tiny_dit.keep_blocks([1, 3])).splitlines()[1].strip() == (
        "DIT, depth 2 (kept blocks [1, 3]), hidden 32, heads 2, patch 2, input 1x8x8, classes 10")


def test_flops_scale_with_depth():
    full, half = config_from_name("DiT-XL/2"), config_from_name("DiT-D14/2")
    # The DiT paper's 118.6 "Gflops" for XL/2 count multiply-accumulates; we count 2 per MAC.
    assert abs(forward_flops(full) / 2 / 118.6e9 - 1) < 0.01
    ratio = forward_flops(half) / forward_flops(full)
    assert 0.49 < ratio < 0.52


def test_randomized_helper_changes_outputs():
    model = randomized(DiffusionTransformer(tiny_config()))
    out = model(torch.randn(1, 1, 8, 8), torch.tensor([10]), torch.tensor([3]))
    assert out.abs().sum() > 0

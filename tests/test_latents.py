import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.data.latents import SD_VAE_SCALE, LatentSpace

diffusers = pytest.importorskip("diffusers")


@pytest.fixture
def tiny_vae_dir(tmp_path):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, layers_per_block=1, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_latent_space_encodes_scaled_and_caches(tiny_vae_dir, tmp_path):
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    data = load_data("photos", image_size=16).subset(range(0, 2048, 128))
    latents = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert latents.images.shape == (16, 4, 8, 8) and not latents.pixels
    raw = space.vae.encode(data.images[:2]).latent_dist.mean
    assert torch.allclose(latents.images[:2], raw * SD_VAE_SCALE, atol=1e-5)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    again = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images, latents.images)
    decoded = space.decode(latents.images[:2])
    assert decoded.shape == (2, 3, 16, 16) and decoded.abs().max() <= 1


def test_latent_space_needs_a_local_vae_folder(tmp_path):
    from entpruner_sdk.data import DataError

    with pytest.raises(DataError, match="AutoencoderKL folder"):
        LatentSpace.from_pretrained(tmp_path)

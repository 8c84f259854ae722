"""Fixtures of the data tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A randomly initialised AutoencoderKL with 4 down blocks (1/8 resolution), saved to a folder."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    path = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(path)
    return path

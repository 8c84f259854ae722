"""The tiny Precond shape the tests share: two levels, attention at 4x4, skip convs, ~10k params."""


def tiny_network(**overrides) -> dict:
    """Precond keyword arguments of a tiny network on 8x8 images, with `overrides` applied."""
    kwargs = dict(
        img_resolution=8,
        img_channels=3,
        label_dim=4,
        model_channels=8,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
    )
    kwargs.update(overrides)
    return kwargs

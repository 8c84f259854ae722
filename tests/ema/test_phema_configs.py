"""Post-hoc EMA of the ablation configs (issue 21): `edm2 phema` reconstructs the snapshots of
B-F as it does G's, copying each config's buffers (Fourier features, A-E's resampling filters)
from the last input instead of averaging them, and refuses config A's traditional EMA, which is
scored as it is (one point of Fig. 5a)."""

import pytest
import torch
from test_phema import ENCODER
from tiny_networks import tiny_network

from edm2.ema.phema import reconstruct_phema
from edm2.errors import ConfigError
from edm2.io.snapshot import build_network, load_snapshot, save_snapshot
from edm2.nn import Precond


def write_config_snapshots(folder, config, extra=None):
    """Random fp16 snapshots of `config`'s tiny network at 4, 8 and 12 kimg x stds 0.05, 0.10;
    the buffers keep the network's values (a run's buffers never change)."""
    kw = tiny_network(channels_per_head=8, config=config)
    template = build_network(kw, device="cpu").state_dict()
    g = torch.Generator().manual_seed(1)
    states = {}
    for kimg in (4, 8, 12):
        nimg = kimg * 1024
        for std in (0.05, 0.10):
            state = {k: v if Precond.is_buffer(k) else torch.randn(v.shape, generator=g) for k, v in template.items()}
            path = folder / f"network-snapshot-{nimg // 1000:07d}-{std:.3f}.safetensors"
            save_snapshot(path, state, kw, ENCODER, nimg, std, extra or {})
            states[(nimg, std)] = {k: v.to(torch.float16) for k, v in state.items()}
    return states, template


@pytest.mark.parametrize("config", "BCDEF")
def test_phema_reconstructs_configs_b_to_f_and_copies_their_buffers(tmp_path, config):
    (tmp_path / "run").mkdir()
    states, template = write_config_snapshots(tmp_path / "run", config)
    result = reconstruct_phema(tmp_path / "run", tmp_path / "out", "0.070,0.130")
    buffers = [k for k in template if Precond.is_buffer(k)]
    assert any(k.endswith("resample_filter") for k in buffers) == (config in "BCDE")
    X, used = result["coefficients"], result["inputs"]
    for j, path in enumerate(result["outputs"]):
        net, info = load_snapshot(path, dtype=None)
        assert net.config == config and info.network_kwargs["config"] == config
        for name, value in net.state_dict().items():
            if name in buffers:  # copied from the last input, never averaged
                assert torch.equal(value, template[name].to(torch.float16)), name
                continue
            expected = sum(X[i, j] * states[(u.nimg, u.std)][name].double() for i, u in enumerate(used))
            torch.testing.assert_close(value.double(), expected, rtol=2e-3, atol=2e-3)


def test_phema_refuses_config_a_traditional_ema_naming_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    write_config_snapshots(tmp_path / "run", "A", extra={"ema_kind": "traditional"})
    with pytest.raises(ConfigError, match=r"network-snapshot-0000004-0\.050\.safetensors holds a traditional EMA"):
        reconstruct_phema(tmp_path / "run", tmp_path / "out", "0.100")
    assert not (tmp_path / "out").exists()

"""FLOPs of the ablation configs A-G (docs/method.md#flops-of-the-ablation-configs): the same counting
rules as G, a hand count of an ADM block, and the differences from G against Table 1 of the paper."""

import pytest
import torch
from click.testing import CliRunner

from edm2.commands.flops import flops as flops_command
from edm2.errors import ConfigError
from edm2.metrics.flops import count_flops, count_flops_of
from edm2.nn import Precond
from edm2.nn.ablation import LadderBlock

# Table 1: Gflops of each config minus G's (A 110.4, B 100.4, C 100.3, D 101.2, E 101.2, F 102.1, G 102.2).
TABLE1_DIFF = {"A": 8.2, "B": -1.8, "C": -1.9, "D": -1.0, "E": -1.0, "F": -0.1, "G": 0.0}


@pytest.mark.slow  # counts every config at S twice: make test runs it, make test-fast does not
@pytest.mark.parametrize("forced_weight_norm", [True, False])
def test_differences_from_g_match_table_1(forced_weight_norm):
    counts = {c: count_flops_of("edm2-img512-s", forced_weight_norm, config=c)[0] for c in TABLE1_DIFF}
    assert all(r.unknown == {} for r in counts.values())
    if forced_weight_norm:
        assert round(counts["G"].gflops, 2) == 102.48  # the official count of EDM2-S (config G)
    for config, diff in TABLE1_DIFF.items():
        assert abs(counts[config].gflops - counts["G"].gflops - diff) <= 0.1, config
    assert counts["D"].total_flops == counts["E"].total_flops  # as Table 1 prints them (101.2 both)


def _weight_norm(out, fan_in):
    """normalize(w) on an [out, fan_in] weight: vector_norm numel(w) + add out + div numel(w)."""
    return out * fan_in + out + out * fan_in


def test_adm_block_by_hand():
    # Config A block, 8 -> 16 channels, 4x4, no attention: EDM's UNetBlock op by op.
    n, cin, cout, emb, hw = 1, 8, 16, 12, 16
    torch.manual_seed(0)
    block = LadderBlock("A", cin, cout, emb, clip_act=None).eval()
    x, e = torch.zeros(n, cin, 4, 4), torch.zeros(n, emb)
    a_in, a_out = n * cin * hw, n * cout * hw
    expected = (
        4 * a_in  # norm0 (group_norm)
        + 3 * a_in  # silu
        + a_out * cin * 9 + a_out  # conv0 + bias
        + n * 2 * cout * emb + n * 2 * cout  # affine (mm) + bias
        + n * cout  # scale + 1
        + 4 * a_out + a_out  # norm1, addcmul
        + 3 * a_out  # silu
        + a_out * cout * 9 + a_out  # conv1 + bias
        + a_out * cin + a_out  # skip (1x1) + bias
        + a_out  # residual sum
    )  # fmt: skip
    assert count_flops(block, args=(x, e), forced_weight_norm=False).total_flops == expected
    charge = (
        _weight_norm(cout, cin * 9)
        + _weight_norm(2 * cout, emb)
        + _weight_norm(cout, cout * 9)
        + _weight_norm(cout, cin)
    )
    assert count_flops(block, args=(x, e)).total_flops == expected + charge


def test_command_counts_a_config_at_a_preset_size_and_a_snapshot_records_its_config(tmp_path):
    result = CliRunner().invoke(flops_command, ["edm2-img512-s", "--config", "A", "--no-table"])
    assert result.exit_code == 0, result.output
    assert "config=A" in result.output and "295.90 M (295,902,724)" in result.output
    bad = CliRunner().invoke(flops_command, ["edm2-img512-s", "--config", "H"])
    assert bad.exit_code != 0
    with pytest.raises(ConfigError, match="unknown network config"):
        count_flops_of("edm2-img512-s", config="H")

    from edm2.io.snapshot import save_snapshot

    kwargs = dict(img_resolution=8, img_channels=3, label_dim=4, model_channels=32, channel_mult=[1, 2], num_blocks=1)
    net = Precond(config="C", attn_resolutions=[4], channels_per_head=16, **kwargs)
    path = tmp_path / "network-snapshot-0000000-0.100.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, 0.1)
    counted, read = count_flops_of(path)
    assert read["config"] == "C" and counted.total_flops == count_flops(net).total_flops

"""The training side of configs A-G of the paper's Table 1 (arXiv 2312.02696, Figs. 16-22): each
config's settings, presets, loss weighting, learning-rate schedule and EMA, checked against the
hyper-parameter boxes and closed forms computed here by hand (issue 21)."""

import math

import numpy as np
import pytest
import torch

from edm2.ema import HalfLifeEMA
from edm2.errors import ConfigError
from edm2.nn import Precond
from edm2.presets import TRAINING_PRESETS
from edm2.train.configs import CONFIG_NAMES, CONFIG_TRAINING, config_training
from edm2.train.loss import EDM2Loss, EDMLoss, make_loss
from edm2.train.options import TrainOptions
from edm2.train.schedule import learning_rate_schedule

# The boxes of Figs. 16-21 at size S: (batch, alpha_ref, t_ref (0 = none), dropout, P_mean, P_std, loss scaling).
BOXES = {
    "A": (4096, 0.0001, 0, 0.10, -1.2, 1.2, 100.0),
    "B": (2048, 0.0002, 0, 0.10, -0.4, 1.0, 100.0),
    "C": (2048, 0.0002, 0, 0.10, -0.4, 1.0, 100.0),
    "D": (2048, 0.0100, 0, 0.10, -0.4, 1.0, 1.0),
    "E": (2048, 0.0100, 70000, 0.10, -0.4, 1.0, 1.0),
    "F": (2048, 0.0100, 70000, 0.10, -0.4, 1.0, 1.0),
}


def resolved(preset, **kw):
    return TrainOptions(outdir="-", data="-", preset=preset, **kw).resolved()


@pytest.mark.parametrize("config", sorted(BOXES))
def test_each_config_preset_fills_the_hyper_parameters_of_its_box(config):
    opts = resolved(f"edm2-img512-s-config-{config.lower()}")
    batch, lr, decay, dropout, P_mean, P_std, loss_scaling = BOXES[config]
    assert opts.config == config
    assert (opts.batch, opts.lr, opts.decay, opts.dropout) == (batch, lr, decay, dropout)
    assert (opts.P_mean, opts.P_std, opts.loss_scaling, opts.channels) == (P_mean, P_std, loss_scaling, 192)
    assert opts.duration == 1 << 31  # 2147.5 Mimg in every config
    assert opts.duration // opts.batch == (1 << 19 if config == "A" else 1 << 20)  # the boxes' iterations
    assert opts.network_kwargs()["config"] == config


def test_the_default_config_is_g_and_g_records_no_config():
    opts = resolved("edm2-img512-s")
    assert opts.config == "G" and opts.loss_scaling == 1.0
    assert "config" not in opts.network_kwargs()
    assert TRAINING_PRESETS["edm2-img512-s"].config == "G"


def test_a_config_given_overrides_the_preset_and_a_bad_one_is_refused_naming_the_flag():
    assert resolved("edm2-img512-s", config="D").config == "D"
    with pytest.raises(ConfigError, match=r"^--config must be one of A, B, C, D, E, F, G, got 'H'$"):
        TrainOptions(outdir="-", data="-", config="H")


def test_the_settings_table_follows_table_1():
    assert tuple(CONFIG_TRAINING) == CONFIG_NAMES
    a = config_training("A")
    assert (a.loss, a.ema, a.adam_betas, a.inf_gradient) == ("edm", "traditional", (0.9, 0.999), 1e5)
    assert (a.ema_halflife_nimg, a.ema_rampup_ratio, a.precision) == (50_000_000, 0.05, "partial")
    for config in "BCDEFG":
        s = config_training(config)
        assert (s.loss, s.ema, s.adam_betas, s.inf_gradient) == ("uncertainty", "power", (0.9, 0.99), 0.0)
        assert s.precision == ("partial" if config == "B" else "full")
    with pytest.raises(ValueError, match="unknown config 'Z'"):
        config_training("Z")


# --- loss weightings -----------------------------------------------------------------------------------------


class ConstantDenoiser(torch.nn.Module):
    """D(x; sigma) = `value` everywhere; u(sigma) = ln(sigma) (so e^u = sigma) when asked."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, sigma, labels=None, return_logvar=False):
        d = torch.full_like(x, self.value)
        return (d, sigma.log().reshape(-1, 1, 1, 1)) if return_logvar else d


def drawn_sigmas(seed, n, P_mean, P_std):
    torch.manual_seed(seed)
    return np.exp(torch.randn([n, 1, 1, 1]).double().numpy() * P_std + P_mean)


def test_config_a_loss_is_edm_lambda_weighting_of_the_squared_error():
    images = torch.full([3, 2, 2, 2], 0.25)
    torch.manual_seed(7)
    loss = EDMLoss()(ConstantDenoiser(1.0), images)  # EDM's P_mean -1.2, P_std 1.2
    sigma = drawn_sigmas(7, 3, -1.2, 1.2)
    lam = (sigma**2 + 0.25) / (sigma**2 * 0.25)  # lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
    expected = np.broadcast_to(lam * (1.0 - 0.25) ** 2, (3, 2, 2, 2))
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-5)


def test_configs_b_to_g_loss_is_uncertainty_weighted():
    images = torch.full([3, 2, 2, 2], -0.5)
    torch.manual_seed(3)
    loss = EDM2Loss()(ConstantDenoiser(0.5), images)  # P_mean -0.4, P_std 1.0
    sigma = drawn_sigmas(3, 3, -0.4, 1.0)
    lam = (sigma**2 + 0.25) / (sigma**2 * 0.25)
    expected = np.broadcast_to(lam / sigma * 1.0**2 + np.log(sigma), (3, 2, 2, 2))  # lambda / e^u (D-y)^2 + u
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-5)


def test_make_loss_picks_the_config_loss_and_names_a_bad_kind():
    assert type(make_loss("edm", P_mean=-1.2, P_std=1.2)) is EDMLoss
    assert type(make_loss("uncertainty")) is EDM2Loss
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        make_loss("l1")


def test_config_a_network_trains_without_an_uncertainty_head():
    net = Precond(8, 3, 0, use_fp16=False, config="A", model_channels=8, channel_mult=[1], num_blocks=1)
    loss = EDMLoss()(net, torch.randn(2, 3, 8, 8))
    assert loss.shape == (2, 3, 8, 8) and torch.isfinite(loss).all()


# --- learning-rate schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("nimg", [0, 1 << 20, 9_999_360, 10_002_432, 1 << 28, 1 << 31])
def test_config_a_to_d_learning_rate_is_warm_up_then_constant(nimg):
    for config in "ABCD":
        opts = resolved(f"edm2-img512-s-config-{config.lower()}")
        lr = learning_rate_schedule(cur_nimg=nimg, batch_size=opts.batch, **opts.lr_kwargs())
        assert lr == pytest.approx(opts.lr * min(nimg / 1e7, 1), rel=1e-12, abs=0)  # EDM: lr * min(nimg / 10 Mimg, 1)


@pytest.mark.parametrize("nimg", [0, 5_000_000, 1 << 27, 143_360_000, 1 << 30, 1 << 31])
def test_config_e_to_g_learning_rate_decays_as_the_inverse_square_root(nimg):
    for preset in ("edm2-img512-s-config-e", "edm2-img512-s-config-f", "edm2-img512-s"):
        opts = resolved(preset)
        lr = learning_rate_schedule(cur_nimg=nimg, batch_size=2048, **opts.lr_kwargs())
        t = nimg / 2048  # iterations
        expected = 0.01 / math.sqrt(max(t / 70000, 1)) * min(nimg / 1e7, 1)  # EDM2 Eq. 67 with the 10 Mimg ramp
        assert lr == pytest.approx(expected, rel=1e-12, abs=0)
    assert learning_rate_schedule(1 << 31, 2048, 0.01, 70000) == pytest.approx(0.01 * math.sqrt(70000 / (1 << 20)))


# --- config A's traditional EMA ----------------------------------------------------------------------------


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros([]))
        self.register_buffer("freqs", torch.zeros(2))


def test_traditional_ema_update_matches_a_hand_computation():
    net = Scalar()
    ema = HalfLifeEMA(net, halflife_nimg=1000, rampup_ratio=0.5)
    steps = [(100, 4.0), (200, 8.0), (300, 0.0)]  # (images after the step, parameter after the step)
    for cur_nimg, value in steps:
        net.w.data.fill_(value)
        ema.update(cur_nimg=cur_nimg, batch_size=100)
    # Step 1 starts at 0 images: h = 0, beta = 0, ema = 4. Step 2 at 100: h = min(1000, 50) = 50,
    # beta = 0.5^(100/50) = 1/4: ema = 4/4 + 8 * 3/4 = 7. Step 3 at 200: h = 100, beta = 1/2: ema = 3.5.
    ((ema_net, std),) = ema.snapshots(300)
    assert ema_net.w.item() == 3.5
    assert std == pytest.approx(min(1000, 150) / (math.log(2) * 300))


def test_traditional_ema_keeps_its_half_life_after_the_ramp_up_and_copies_buffers():
    net = Scalar()
    ema = HalfLifeEMA(net, halflife_nimg=200, rampup_ratio=0.5)
    net.w.data.fill_(2.0)
    ema.update(cur_nimg=1000, batch_size=100)  # starts at 900 images: h = min(200, 450) = 200
    assert ema.beta(900, 100) == 0.5**0.5
    net.freqs.fill_(3.0)
    ((ema_net, _std),) = ema.snapshots(1000)
    assert ema_net.w.item() == pytest.approx(2.0 * (1 - 0.5**0.5))
    assert ema_net.freqs.tolist() == [3.0, 3.0]


def test_config_a_snapshot_std_is_the_relative_std_of_its_half_life():
    ema = HalfLifeEMA(Scalar())  # EDM: 50 Mimg half-life, ramp-up 0.05
    assert ema.relative_std(1 << 31) == pytest.approx(50e6 / math.log(2) / 2**31)  # 0.034 (Fig. 5a's A)
    assert f"{ema.relative_std(1 << 31):.3f}" == "0.034"
    assert ema.relative_std(1 << 20) == pytest.approx(0.05 / math.log(2))
    assert ema.relative_std(0) == pytest.approx(0.05 / math.log(2))


def test_traditional_ema_state_round_trips():
    net = Scalar()
    ema = HalfLifeEMA(net, halflife_nimg=1000)
    net.w.data.fill_(1.5)
    ema.update(cur_nimg=100, batch_size=100)
    other = HalfLifeEMA(Scalar(), halflife_nimg=1)
    other.load_state_dict(ema.state_dict())
    assert other.describe() == ema.describe() and other.ema.w.item() == 1.5


# --- buffers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_precond_names_the_buffers_of_every_config(config):
    net = Precond(16, 4, 10, config=config, model_channels=8, channel_mult=[1, 2], num_blocks=1)
    buffers = {name for name, _ in net.named_buffers()}
    assert buffers, config
    for name in net.state_dict():
        assert Precond.is_buffer(name) == (name in buffers), name


def test_the_traditional_ema_std_of_the_settings_is_the_trackers():
    a = config_training("A")
    for nimg in (0, 1 << 20, 1 << 31):
        assert a.traditional_ema_std(nimg) == pytest.approx(HalfLifeEMA(Scalar()).relative_std(nimg), rel=1e-12)
    with pytest.raises(ValueError, match="traditional"):
        config_training("G").traditional_ema_std(1 << 20)


def test_fast_asks_for_fused_attention_only_where_the_network_has_it():
    assert resolved("edm2-img512-s", fast=True).network_kwargs()["fused_attention"] is True
    for config in "ABCDEF":
        kwargs = resolved(f"edm2-img512-s-config-{config.lower()}", fast=True).network_kwargs()
        assert "fused_attention" not in kwargs
        Precond(8, 4, 0, **dict(kwargs, model_channels=8, channel_mult=[1], num_blocks=1), use_fp16=False)

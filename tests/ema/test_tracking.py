"""EMA trackers (docs/method.md#ema) run over synthetic parameter trajectories and compared
with the weights derived by hand and by brute force."""

import numpy as np
import pytest
import torch

from edm2.ema import PowerFunctionEMA, TraditionalEMA, std_to_exp


class TinyNet(torch.nn.Module):
    """Two float64 parameters and one buffer, standing in for the network."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.gain = torch.nn.Parameter(torch.zeros([], dtype=torch.float64))
        self.register_buffer("freqs", torch.zeros(2, dtype=torch.float64))

    def set(self, weight, gain, freqs=None):
        with torch.no_grad():
            self.weight.copy_(torch.as_tensor(weight, dtype=torch.float64))
            self.gain.fill_(float(gain))
            if freqs is not None:
                self.freqs.copy_(torch.as_tensor(freqs, dtype=torch.float64))


def trajectory(num_steps, seed=0):
    """Parameter values after optimizer steps 1..num_steps: weight [K,3] and gain [K]."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_steps, 3)), rng.normal(size=num_steps)


def run_power_ema(stds, nimg_after_each_step, weights, gains):
    net = TinyNet()
    ema = PowerFunctionEMA(net, stds=stds)
    prev = 0
    for t, w, g in zip(nimg_after_each_step, weights, gains):
        net.set(w, g)  # the optimizer step
        ema.update(cur_nimg=t, batch_size=t - prev)  # called with the incremented image count
        prev = t
    return net, ema


def brute_force_weights(std, nimg_after_each_step):
    """Weight of each step's parameters in the EMA: (1 - beta_k) * prod_{j>k} beta_j."""
    gamma = float(std_to_exp(std))
    t = np.concatenate([[0.0], np.float64(nimg_after_each_step)])
    betas = [(1 - (t[k] - t[k - 1]) / t[k]) ** (gamma + 1) for k in range(1, len(t))]
    weights = []
    for k in range(len(betas)):
        w = 1 - betas[k]
        for j in range(k + 1, len(betas)):
            w *= betas[j]
        weights.append(w)
    return np.array(weights)


@pytest.mark.parametrize("std", [0.05, 0.10, 0.2])
def test_power_ema_of_a_trajectory_equals_the_discrete_power_function_average(std):
    K, batch = 200, 64
    weights, gains = trajectory(K)
    nimg = batch * np.arange(1, K + 1)
    _net, ema = run_power_ema([std], nimg, weights, gains)
    (module, _suffix), *_ = ema.get()

    # Closed form: the betas telescope, so step k carries (k^(g+1) - (k-1)^(g+1)) / K^(g+1).
    g = float(std_to_exp(std))
    k = np.arange(1, K + 1, dtype=np.float64)
    closed = (k ** (g + 1) - (k - 1) ** (g + 1)) / K ** (g + 1)
    np.testing.assert_allclose(closed, brute_force_weights(std, nimg), rtol=1e-10, atol=1e-300)
    assert closed.sum() == pytest.approx(1, abs=1e-13)

    np.testing.assert_allclose(module.weight.detach().numpy(), closed @ weights, rtol=1e-11, atol=1e-13)
    assert module.gain.item() == pytest.approx(closed @ gains, rel=1e-11, abs=1e-13)


def test_power_ema_with_varying_batch_sizes_integrates_the_trajectory_against_the_profile():
    # Holding each step's parameters over its image interval (t_{k-1}, t_k], the EMA equals
    # the integral of that piecewise-constant trajectory against p(t) = (g+1)/T (t/T)^g.
    rng = np.random.default_rng(1)
    batches = rng.integers(1, 500, size=120)
    nimg = np.cumsum(batches)
    weights, gains = trajectory(len(nimg), seed=2)
    std = 0.07
    _net, ema = run_power_ema([std], nimg, weights, gains)
    module = ema.get()[0][0]

    g, T = float(std_to_exp(std)), float(nimg[-1])
    edges = np.concatenate([[0.0], nimg]) / T
    interval_mass = edges[1:] ** (g + 1) - edges[:-1] ** (g + 1)  # int over (t_{k-1}, t_k] of p(t) dt
    np.testing.assert_allclose(interval_mass, brute_force_weights(std, nimg), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(module.weight.detach().numpy(), interval_mass @ weights, rtol=1e-11, atol=1e-13)


def test_first_update_copies_the_current_parameters():
    net = TinyNet()
    net.set([9.0, 9.0, 9.0], 9.0)
    ema = PowerFunctionEMA(net, stds=[0.05, 0.10])
    net.set([1.0, -2.0, 3.0], 0.5)
    ema.update(cur_nimg=2048, batch_size=2048)  # beta = 0 on the first step
    for module, _suffix in ema.get():
        assert module.weight.tolist() == [1.0, -2.0, 3.0] and module.gain.item() == 0.5


def test_emas_are_independent_copies_that_start_from_the_net():
    net = TinyNet()
    net.set([1.0, 2.0, 3.0], 4.0)
    ema = PowerFunctionEMA(net)
    assert ema.stds == [0.05, 0.10]  # docs/method.md#ema default
    modules = [m for m, _ in ema.get()]
    assert len(modules) == 2 and modules[0] is not net and modules[0] is not modules[1]
    for m in modules:
        assert m.weight.tolist() == [1.0, 2.0, 3.0]
        assert m.weight.data_ptr() != net.weight.data_ptr()
    net.set([0.0, 0.0, 0.0], 0.0)  # changing the net does not change the EMAs without update()
    assert modules[0].weight.tolist() == [1.0, 2.0, 3.0]


def test_get_copies_buffers_from_the_live_net_and_names_emas_by_std():
    net = TinyNet()
    ema = PowerFunctionEMA(net, stds=[0.05, 0.1, 0.123])
    net.set([1.0, 1.0, 1.0], 1.0, freqs=[7.0, 8.0])
    ema.update(cur_nimg=10, batch_size=10)
    # Buffers are not averaged by update() ...
    assert ema.emas[0].freqs.tolist() == [0.0, 0.0]
    result = ema.get()
    assert [suffix for _m, suffix in result] == ["-0.050", "-0.100", "-0.123"]
    # ... but copied (not aliased) from the net when the EMAs are read.
    for module, _suffix in result:
        assert module.freqs.tolist() == [7.0, 8.0]
        assert module.freqs.data_ptr() != net.freqs.data_ptr()


def test_state_dict_round_trip_resumes_exactly():
    K, batch = 60, 32
    weights, gains = trajectory(K, seed=3)
    nimg = batch * np.arange(1, K + 1)
    stds = [0.05, 0.10]
    _net, uninterrupted = run_power_ema(stds, nimg, weights, gains)

    net_a, first_half = run_power_ema(stds, nimg[:30], weights[:30], gains[:30])
    state = first_half.state_dict()
    assert set(state) == {"stds", "emas"} and list(state["stds"]) == stds and len(state["emas"]) == 2
    assert set(state["emas"][0]) == {"weight", "gain", "freqs"}

    net_b = TinyNet()  # a fresh process: new net, new tracker, then load
    resumed = PowerFunctionEMA(net_b, stds=[0.2, 0.25])
    resumed.load_state_dict(state)
    assert resumed.stds == stds
    for t, w, g in zip(nimg[30:], weights[30:], gains[30:]):
        net_b.set(w, g)
        resumed.update(cur_nimg=t, batch_size=batch)
    for (m1, s1), (m2, s2) in zip(uninterrupted.get(), resumed.get()):
        assert s1 == s2
        torch.testing.assert_close(m1.weight, m2.weight, rtol=0, atol=0)
        torch.testing.assert_close(m1.gain, m2.gain, rtol=0, atol=0)


# --- TraditionalEMA --------------------------------------------------------------------------


def test_traditional_ema_with_a_fixed_halflife_halves_the_old_weight_per_halflife():
    net = TinyNet()
    net.set([0.0, 0.0, 0.0], 0.0)
    ema = TraditionalEMA(net, halflife_Mimg=0.5, rampup_ratio=None)
    net.set([8.0, 8.0, 8.0], 8.0)
    ema.update(cur_nimg=500_000, batch_size=500_000)  # one half-life worth of images: beta = 1/2
    assert ema.get().weight.tolist() == [4.0, 4.0, 4.0]
    ema.update(cur_nimg=750_000, batch_size=250_000)  # half a half-life: beta = 2^-0.5
    expected = 8 + (4 - 8) * 0.5**0.5
    assert ema.get().gain.item() == pytest.approx(expected, rel=1e-14)


def test_traditional_ema_rampup_limits_the_halflife_to_a_fraction_of_the_images_seen():
    net = TinyNet()
    ema = TraditionalEMA(net)  # halflife inf, rampup 0.09
    values = [3.0, -1.0, 2.0, 5.0]
    expected = 0.0
    cur_nimg, batch = 0, 1000
    for v in values:
        cur_nimg += batch
        net.set([v, v, v], v)
        ema.update(cur_nimg=cur_nimg, batch_size=batch)
        beta = 0.5 ** (batch / (0.09 * cur_nimg))  # h = cur_nimg * 0.09 images
        expected = beta * expected + (1 - beta) * v
    assert ema.get().gain.item() == pytest.approx(expected, rel=1e-13)


def test_traditional_ema_with_infinite_halflife_and_no_rampup_never_moves():
    net = TinyNet()
    net.set([1.0, 1.0, 1.0], 1.0)
    ema = TraditionalEMA(net, halflife_Mimg=float("inf"), rampup_ratio=None)
    net.set([5.0, 5.0, 5.0], 5.0)
    ema.update(cur_nimg=1000, batch_size=1000)
    assert ema.get().weight.tolist() == [1.0, 1.0, 1.0]


def test_traditional_ema_get_copies_buffers_and_state_dict_is_the_modules():
    net = TinyNet()
    ema = TraditionalEMA(net, halflife_Mimg=1.0)
    net.set([2.0, 2.0, 2.0], 2.0, freqs=[3.0, 4.0])
    ema.update(cur_nimg=1000, batch_size=1000)
    module = ema.get()
    assert isinstance(module, torch.nn.Module) and module is not net
    assert module.freqs.tolist() == [3.0, 4.0]
    state = ema.state_dict()
    assert set(state) == {"weight", "gain", "freqs"}
    other = TraditionalEMA(TinyNet(), halflife_Mimg=1.0)
    other.load_state_dict(state)
    torch.testing.assert_close(other.get().weight, module.weight, rtol=0, atol=0)

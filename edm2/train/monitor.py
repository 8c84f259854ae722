"""What a training run shows while it trains, beyond the official status line (docs/training.md#monitoring):

* per step: the loss per noise-level band (the loss-vs-sigma profile) and the gradient norm;
* at every status: the weight magnitudes per U-Net bucket of the EMA network (EDM2, arXiv
  2312.02696, Appendix A.6, Eq. 3; edm2.analysis.magnitudes);
* every --probe images (default: every snapshot): the activation magnitudes per bucket of the
  EMA network on a fixed probe batch of the training data;
* with --tensorboard (rank 0): every value of `stats.jsonl` as a TensorBoard scalar at step =
  training images, images/second, and at every snapshot a grid of samples from the EMA network
  (fixed seeds and classes, so successive grids compare).

All of it only reads the training state: the probe and the sampler draw from their own
generators under a forked global RNG, the EMA network is evaluated in eval mode (no dropout, no
forced weight normalisation) and its mode restored, so a run with the monitor computes the same
weights, bit for bit, as one without (tests/train/test_monitor.py). With --probe 0 none of it
runs. A run resumed from a training state at N images opens TensorBoard with purge_step N + 1,
so the curves continue without duplicated or missing steps.
"""

import math

import numpy as np
import torch

from edm2.analysis.magnitudes import (
    ActivationProbe,
    bucket_of,
    buckets,
    feature_magnitudes,
    make_probe_inputs,
    measured_layers,
)
from edm2.distributed import print0

PROBE_BATCH = 64  # items of the fixed probe batch
PROBE_SEED = 0  # its draws: the same batch in every run of the same data and noise distribution
GRID_SEEDS = range(16)  # samples of the TensorBoard grid: seed i, class i mod label_dim
GRID_STEPS = 16  # Heun steps of the grid's sampler (31 evaluations: a preview, cheap next to the snapshot interval)
# Noise-level bands of the loss profile, edges in sigma (one band below the first and above the last).
SIGMA_BAND_EDGES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def sigma_band_names() -> list[str]:
    """'Loss_by_sigma/below_0.01', 'Loss_by_sigma/0.01_to_0.03', ..., 'Loss_by_sigma/above_10'."""
    e = [f"{v:g}" for v in SIGMA_BAND_EDGES]
    middle = [f"{lo}_to_{hi}" for lo, hi in zip(e[:-1], e[1:])]
    return [f"Loss_by_sigma/{b}" for b in [f"below_{e[0]}", *middle, f"above_{e[-1]}"]]


def report_loss_by_sigma(stats, loss: torch.Tensor, sigma: torch.Tensor) -> None:
    """Report the per-sample loss (the mean of the per-element loss [N, C, H, W] over its elements)
    into the statistic of its sigma band [N], without a host sync (StatsCollector.report_groups)."""
    per_sample = loss.detach().reshape(loss.shape[0], -1).mean(dim=1)
    edges = torch.as_tensor(SIGMA_BAND_EDGES, dtype=sigma.dtype, device=sigma.device)
    band = torch.bucketize(sigma.detach().reshape(-1), edges)
    stats.report_groups(sigma_band_names(), per_sample, band)


def gradient_norm(net) -> torch.Tensor | None:
    """The L2 norm [] (float32) of every gradient of `net` together, or None without gradients."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).to(torch.float32))


def probe_network(ema):
    """The EMA network the monitor measures: the power-function EMA whose sigma_rel is closest to
    0.10 (the paper's figures measure "the EMA-averaged network"), or config A's one EMA."""
    nets = ema.snapshots(0)  # [(network, std)], the buffers copied from the trained network
    return min(nets, key=lambda item: abs(float(item[1]) - 0.10))[0]


class TrainingMonitor:
    """The monitor of one invocation of the training loop (every rank makes one; only rank 0
    measures magnitudes and writes TensorBoard). Built after the training state is restored."""

    def __init__(self, opts, plan, run, start_nimg: int):
        self.enabled = opts.probe != 0  # --probe 0: none of the measurements
        self.interval = opts.probe_interval()
        self.run = run
        self.rank = run.rank
        self.writer = None
        self.images_ok = True
        self.inputs = None
        if self.rank != 0:
            return
        net = run.net
        self.layers = list(measured_layers(net))
        self.layer_buckets = [bucket_of(name) for name in self.layers]
        self.bucket_names = buckets(net)
        if self.enabled and self.interval:
            settings = run.loss_fn.kwargs()
            inputs = make_probe_inputs(
                plan.dataset,
                run.encoder,
                PROBE_BATCH,
                PROBE_SEED,
                settings["P_mean"],
                settings["P_std"],
                net.label_dim,
            )
            self.inputs = inputs
        if opts.tensorboard:
            self.writer = open_tensorboard(opts.outdir, start_nimg)

    # ---- per step (every rank) ------------------------------------------------------------------

    def after_backward(self, stats, loss_scaling: float) -> None:
        """Report the gradient norm of the step (divided by the loss scaling: the gradient of the
        batch-mean loss), before the gradients are made finite."""
        if not self.enabled:
            return
        norm = gradient_norm(self.run.net)
        if norm is not None:
            stats.report("Loss/grad_norm", norm / loss_scaling)

    # ---- at a status (rank 0 measures; every rank calls) ----------------------------------------

    @torch.no_grad()
    def before_status(self, stats) -> None:
        """Weight magnitudes of the EMA network, as rank-0 values of the status about to be written."""
        if not self.enabled or self.rank != 0:
            return
        net = probe_network(self.run.ema)
        modules = dict(net.named_modules())
        per = [feature_magnitudes(modules[name].weight.detach()) for name in self.layers]
        for name, value in self._pool("Magnitudes/weights", per).items():
            stats.report0(name, value)

    def probe_due(self, cur_nimg: int) -> bool:
        """Whether the activation probe runs at `cur_nimg` images (every --probe images)."""
        return self.enabled and bool(self.interval) and cur_nimg % self.interval == 0

    @torch.no_grad()
    def probe(self, stats) -> None:
        """Activation magnitudes of the EMA network on the probe batch, as rank-0 values of the
        next status."""
        if self.rank != 0 or self.inputs is None:
            return
        values = self._pool("Magnitudes/activations", self._activations(probe_network(self.run.ema)))
        for name, value in values.items():
            stats.report0(name, value)

    def _pool(self, prefix: str, per: list) -> dict:
        """{prefix_max/bucket: .., prefix_mean/bucket: ..} of per-feature values per layer, one host sync."""
        rows = []
        for bucket in self.bucket_names:
            flat = torch.cat([v.reshape(-1).float() for v, b in zip(per, self.layer_buckets) if b == bucket])
            rows.append(torch.stack([flat.max(), flat.mean()]))
        table = torch.stack(rows).cpu().tolist()
        out = {}
        for bucket, (vmax, vmean) in zip(self.bucket_names, table):
            out[f"{prefix}_max/{bucket}"] = vmax
            out[f"{prefix}_mean/{bucket}"] = vmean
        return out

    def _activations(self, net) -> list:
        was_training = net.training
        device = self.run.device
        x = (self.inputs.images + self.inputs.noise).to(device)
        labels = self.inputs.labels.to(device) if self.inputs.labels is not None else None
        sigma = self.inputs.sigma.to(device)
        net.eval()
        try:
            with ActivationProbe(net) as probe:
                net(x, sigma, labels, force_fp32=True)
        finally:
            net.train(was_training)
        per = probe.per_feature()
        return [per[name] for name in self.layers]

    def after_status(self, cur_nimg: int, means: dict) -> None:
        """Every value of the status as a TensorBoard scalar at step `cur_nimg` (rank 0)."""
        if self.writer is None:
            return
        for name, value in means.items():
            if isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=cur_nimg)
        sec_per_kimg = means.get("Timing/sec_per_kimg")
        if sec_per_kimg and math.isfinite(sec_per_kimg) and sec_per_kimg > 0:
            self.writer.add_scalar("Timing/images_per_sec", 1000 / sec_per_kimg, global_step=cur_nimg)
        self.writer.flush()

    # ---- at a snapshot (rank 0) ------------------------------------------------------------------

    @torch.no_grad()
    def at_snapshot(self, cur_nimg: int) -> None:
        """A grid of samples of the EMA network (fixed seeds and classes) into TensorBoard."""
        if self.writer is None or not self.images_ok:
            return
        try:
            grid = sample_grid(probe_network(self.run.ema), self.run.encoder, self.run.device)
        except Exception as e:  # e.g. a VAE that cannot be loaded here: monitoring never stops a run
            print0(f"Warning: no TensorBoard sample grids in this run ({type(e).__name__}: {e})")
            self.images_ok = False
            return
        self.writer.add_image("Samples/ema", grid, global_step=cur_nimg, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_tensorboard(outdir, start_nimg: int):
    """A `torch.utils.tensorboard.SummaryWriter` on the run folder; a resumed run (start_nimg > 0)
    purges the events after its training state (purge_step = start_nimg + 1: the status at
    start_nimg was written by the invocation that saved the state). None, with a warning, when the
    tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print0("Warning: the tensorboard package is not installed (pip install 'edm2[monitor]'); no event files")
        return None
    return SummaryWriter(log_dir=str(outdir), purge_step=start_nimg + 1 if start_nimg else None)


def sample_grid(net, encoder, device) -> np.ndarray:
    """uint8 [H, W, 3] grid of `len(GRID_SEEDS)` samples of `net` (EDM sampler, GRID_STEPS Heun
    steps, seed i with class i mod label_dim), decoded by `encoder`; the net's mode is restored
    and the global RNG left as it was."""
    from edm2.report.images import make_grid
    from edm2.sample.sampler import StackedRandomGenerator, edm_sampler

    was_training = net.training
    net.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            seeds = list(GRID_SEEDS)
            rnd = StackedRandomGenerator(device, seeds)
            shape = [len(seeds), net.img_channels, net.img_resolution, net.img_resolution]
            noise = rnd.randn(shape, device=device)
            labels = None
            if net.label_dim:
                labels = torch.eye(net.label_dim, device=device)[[s % net.label_dim for s in seeds]]
            images = encoder.decode(edm_sampler(net, noise, labels, num_steps=GRID_STEPS, randn_like=rnd.randn_like))
    finally:
        net.train(was_training)
    images = images.permute(0, 2, 3, 1).cpu().numpy()
    return make_grid(list(images), columns=8)

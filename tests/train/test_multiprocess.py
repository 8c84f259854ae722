"""Two gloo processes (docs/method.md#distributed): DDP's averaged gradient is the mean of the ranks' own gradients,
and a 2-rank training run keeps both ranks' weights identical after every step."""

import copy
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from train_helpers import make_dataset

from edm2.data.dataset import ImageFolderDataset
from edm2.data.encoders import StandardRGBEncoder
from edm2.nn import Precond
from edm2.train.data import InfiniteSampler, make_batch_iterator
from edm2.train.loop import accumulate_gradients, set_random_seed, training_loop
from edm2.train.loss import EDM2Loss
from edm2.train.options import TrainOptions

WORLD = 2
NET = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)


def check_gradient_is_the_rank_mean(rank, data):
    set_random_seed(0, rank)  # every rank builds different weights; DDP broadcasts rank 0's
    net = Precond(8, 3, 4, use_fp16=False, **NET).train()
    with torch.no_grad():  # non-zero gains, so that every layer gets a gradient
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.7)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    local = copy.deepcopy(net)
    dataset = ImageFolderDataset(data)
    stream = make_batch_iterator(dataset, InfiniteSampler(len(dataset), rank, WORLD), 4, 0, "cpu")
    batches = [next(stream), next(stream)]  # two accumulation rounds of 4 images per rank
    for model in (ddp, local):
        set_random_seed(0, rank, 0)
        accumulate_gradients(model, EDM2Loss(), StandardRGBEncoder(), iter(batches), 2, 8, 1.0, "cpu")
    differ = 0
    for (name, p), q in zip(net.named_parameters(), local.parameters()):
        own = [torch.empty_like(q.grad) for _ in range(WORLD)]
        tdist.all_gather(own, q.grad)
        differ += not torch.equal(own[0], own[1])
        torch.testing.assert_close(p.grad, (own[0] + own[1]) / 2, rtol=1e-6, atol=1e-10, msg=name)
    assert differ > len(list(net.parameters())) // 2  # the ranks really saw different data and noise


def check_training_keeps_ranks_identical(rank, data, outdir, fast=False):
    steps = []

    def hook(cur_nimg, net, optimizer, ema, lr):
        for name, tensor in list(net.state_dict().items()) + [("ema", ema.emas[1].unet.out_gain.detach())]:
            copies = [torch.empty_like(tensor) for _ in range(WORLD)]
            tdist.all_gather(copies, tensor.contiguous())
            assert torch.equal(copies[0], copies[1]), f"step {len(steps)}: {name} differs between ranks"
        steps.append(cur_nimg)

    opts = TrainOptions(
        outdir=str(outdir),
        data=str(data),
        batch=32,
        batch_gpu=8,  # 2 ranks x 2 accumulation rounds x 8
        duration=256,
        channels=NET["model_channels"],
        channel_mult=NET["channel_mult"],
        num_blocks=NET["num_blocks"],
        attn_resolutions=NET["attn_resolutions"],
        dropout=NET["dropout"],
        P_mean=-0.8,
        P_std=1.6,
        lr=0.02,
        decay=35000,
        status=64,
        snapshot=0,
        checkpoint=0,
        precision="fp32",
        workers=0,
        fast=fast,
    )
    lr_kwargs = dict(ref_lr=0.02, ref_batches=35000, rampup_Mimg=0.0001)
    result = training_loop(opts, device="cpu", step_hook=hook, progress=False, lr_kwargs=lr_kwargs)
    assert result.finished and steps == list(range(32, 257, 32))


def worker(rank, port, data, outdir):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        check_gradient_is_the_rank_mean(rank, data)
        check_training_keeps_ranks_identical(rank, data, outdir)
    finally:
        tdist.destroy_process_group()


def fast_worker(rank, port, data, outdir):
    """`--fast` under DDP, compiled with the 'aot_eager' backend (traced graphs, no kernel generation)."""
    import edm2.train.speed

    edm2.train.speed.COMPILE_BACKEND = "aot_eager"
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        check_training_keeps_ranks_identical(rank, data, outdir, fast=True)
    finally:
        tdist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    data = make_dataset(tmp_path / "ds", num_images=40)
    mp.spawn(worker, args=(free_port(), str(data), str(tmp_path / "run")), nprocs=WORLD, join=True)
    stats = (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    assert len(stats) == 5  # nimg 0, 64, 128, 192, 256 (rank 0 only)


@pytest.mark.slow
def test_two_gloo_processes_with_the_fast_path(tmp_path):
    data = make_dataset(tmp_path / "ds", num_images=40)
    mp.spawn(fast_worker, args=(free_port(), str(data), str(tmp_path / "run")), nprocs=WORLD, join=True)
    assert len((tmp_path / "run" / "stats.jsonl").read_text().splitlines()) == 5

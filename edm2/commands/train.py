"""`edm2 train`: a thin click wrapper over edm2.train.run.run_training (docs/method.md#presets)."""

import click

from edm2.commands.paths import OutputDir
from edm2.errors import ConfigError


def _nimg(ctx, param, value):
    from edm2.utils import parse_nimg

    if value is None:
        return None
    try:
        return parse_nimg(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


def _int_list(ctx, param, value):
    from edm2.utils import parse_int_list

    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return parse_int_list(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


def _std_list(ctx, param, value):
    from edm2.ema import parse_std_list

    try:
        return parse_std_list(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--outdir", help="Where to save the results", metavar="DIR", type=OutputDir("run folder"), required=True)
@click.option("--data", help="Path to the dataset (ZIP or folder)", metavar="ZIP|DIR", type=str, required=True)
@click.option("--cond", help="Train class-conditional model", metavar="BOOL", type=bool, default=True)
@click.option("--uncond", help="Train an unconditional model (same as --cond=False)", is_flag=True)
@click.option(
    "--preset",
    help="Configuration preset (fills the options not given)",
    metavar="STR",
    type=str,
    default="edm2-img512-s",
)
@click.option("--duration", help="Training duration", metavar="NIMG", callback=_nimg, default=None)
@click.option("--batch", help="Total batch size", metavar="NIMG", callback=_nimg, default=None)
@click.option("--channels", help="Channel multiplier", metavar="INT", type=click.IntRange(min=1), default=None)
@click.option(
    "--dropout", help="Dropout probability", metavar="FLOAT", type=click.FloatRange(min=0, max=1), default=None
)
@click.option("--P_mean", "P_mean", help="Noise level mean", metavar="FLOAT", type=float, default=None)
@click.option(
    "--P_std",
    "P_std",
    help="Noise level standard deviation",
    metavar="FLOAT",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
)
@click.option("--lr", help="Learning rate", metavar="FLOAT", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option(
    "--decay", help="Learning rate decay (batches)", metavar="BATCHES", type=click.FloatRange(min=0), default=None
)
@click.option(
    "--batch-gpu", help="Limit batch size per process (0 = no limit)", metavar="NIMG", callback=_nimg, default="0"
)
@click.option("--fp16", help="Enable mixed-precision training (CUDA only)", metavar="BOOL", type=bool, default=True)
@click.option(
    "--precision",
    help="Main-path precision; overrides --fp16",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
)
@click.option(
    "--ls",
    "loss_scaling",
    help="Loss scaling",
    metavar="FLOAT",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
)
@click.option("--bench", help="Enable cuDNN benchmarking", metavar="BOOL", type=bool, default=True)
@click.option("--status", help="Interval of status prints (0 = never)", metavar="NIMG", callback=_nimg, default="128Ki")
@click.option(
    "--snapshot", help="Interval of network snapshots (0 = never)", metavar="NIMG", callback=_nimg, default="8Mi"
)
@click.option(
    "--checkpoint", help="Interval of training states (0 = never)", metavar="NIMG", callback=_nimg, default="128Mi"
)
@click.option(
    "--slice",
    "slice_nimg",
    help="Train at most this many images in this invocation, then stop at a checkpoint",
    metavar="NIMG",
    callback=_nimg,
    default=None,
)
@click.option("--seed", help="Random seed", metavar="INT", type=int, default=0)
@click.option(
    "--workers",
    help="DataLoader worker processes (0 = read in the training process)",
    metavar="INT",
    type=click.IntRange(min=0),
    default=2,
)
@click.option(
    "--channel-mult",
    help="Per-resolution channel multipliers, e.g. 1,2 (default 1,2,3,4)",
    metavar="LIST",
    callback=_int_list,
    default=None,
)
@click.option(
    "--num-blocks",
    help="Residual blocks per resolution (default 3)",
    metavar="INT",
    type=click.IntRange(min=1),
    default=None,
)
@click.option(
    "--attn-resolutions",
    help="Resolutions with self-attention, e.g. 8 or none (default 16,8)",
    metavar="LIST",
    callback=_int_list,
    default=None,
)
@click.option(
    "--ema-stds",
    help="Relative EMA stds to track and snapshot",
    metavar="LIST",
    callback=_std_list,
    default="0.050,0.100",
)
@click.option(
    "--channels-last",
    help="Channels-last convolutions (faster on CPU; equal to the default up to float rounding)",
    is_flag=True,
)
@click.option(
    "--compile",
    help="torch.compile the network (minutes to compile; equal to the default up to float rounding)",
    is_flag=True,
)
@click.option(
    "--fast",
    help="Fast path: --compile, --channels-last, fused attention, fused Adam on CUDA (equal to the default up "
    "to float rounding; compiling takes minutes)",
    is_flag=True,
)
@click.option(
    "--device", help="Compute device (default: CUDA when available)", type=click.Choice(["cuda", "cpu"]), default=None
)
@click.option("-n", "--dry-run", help="Print training options and exit", is_flag=True)
def train(**kw):
    """Train an EDM2 diffusion model (or resume the run in --outdir) on one or more processes.

    Preset values fill only the options not given. Sizes accept Ki/Mi/Gi (binary: 8Mi =
    8388608 images). Resumes from the newest training state in --outdir. SIGTERM or SIGUSR1
    (SLURM's warning before a time limit) or Ctrl-C finishes the current step, writes a training
    state and exits with status 75 (a second Ctrl-C stops at once, without a state); re-run the
    same command to continue. Several GPUs or nodes: start it
    with torchrun, or with one SLURM task per GPU.

    \b
    Examples:
      edm2 train --outdir runs/demo --data data/digits.zip --preset edm2-img64-xs --duration 2Ki \\
          --batch 32 --channels 16 --channel-mult 1,2 --num-blocks 1 --attn-resolutions 8 \\
          --snapshot 1Ki --checkpoint 2Ki --status 1Ki --precision fp32 --workers 0

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 train --outdir runs/img512-xs --data datasets/img512-sd.zip --preset edm2-img512-xs
      torchrun --standalone --nproc_per_node 8 -m edm2 train --outdir runs/s --data img512-sd.zip \\
          --preset edm2-img512-s --batch-gpu 32 --slice 64Mi
    """
    from edm2.signals import StopSignal

    # From here on SIGTERM/SIGUSR1 only set a flag: one that arrives while torch is imported or the
    # dataset opened stops the run before its first step, with status 75 like a later one.
    with StopSignal() as stop:
        status = _train(stop, kw)
    click.get_current_context().exit(status)


def _train(stop, kw) -> int:
    """The body of `edm2 train` (options -> TrainOptions -> run); returns the exit status."""
    from edm2.train.run import TrainOptions, exit_status, run_training

    ctx = click.get_current_context()
    cond = kw.pop("cond")
    if kw.pop("uncond"):
        if ctx.get_parameter_source("cond").name == "COMMANDLINE" and cond:
            raise click.UsageError("--cond=True and --uncond contradict each other; give one")
        cond = False
    fp16 = kw.pop("fp16")
    precision = kw.pop("precision")
    if precision is None:
        precision = "fp16" if fp16 else "fp32"
    elif ctx.get_parameter_source("fp16").name == "COMMANDLINE" and fp16 != (precision != "fp32"):
        raise click.UsageError(f"--fp16={fp16} contradicts --precision {precision}; give one")
    device = kw.pop("device")
    opts = TrainOptions(
        outdir=kw.pop("outdir"),
        data=kw.pop("data"),
        cond=cond,
        precision=precision,
        slice=kw.pop("slice_nimg"),
        **kw,
    )
    result = run_training(opts, device=device, stop=stop)  # the CLI leaves the process group after
    status = exit_status(result)
    if status:
        saved = "a training state is written" if result.cur_nimg != result.start_nimg else "nothing new to save"
        click.echo(
            f"Stopped by a signal at {result.cur_nimg} images; {saved}. Re-run the same command to resume.",
            err=True,
        )
    return status

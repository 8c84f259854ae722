"""`edm2 train`: a thin click wrapper over edm2.train.run.run_training (docs/method.md#presets)."""

import click

from edm2.commands.paths import OutputDir
from edm2.train.options import DEFAULTS, TRAIN_FIELDS

_METAVARS = {"path": "PATH", "str": "STR", "bool": "BOOL", "int": "INT", "nimg": "NIMG", "float": "FLOAT"}
_METAVARS.update(int_list="LIST", std_list="LIST")


def _table_options(command):
    """The click options of the table of training options (edm2.train.options), in its order,
    plus the command's own: --uncond (= --cond False), --no-tensorboard (= --tensorboard False), --fp16 (the official spelling of
    --precision fp16/fp32) and --device (where to run, not an option of the run).

    Every value reaches the command as text (or a bool for flags) and is parsed and checked by
    the table, so NaN, infinities and out-of-range values are one-line errors naming the option.
    """
    options = []
    for name, field in TRAIN_FIELDS.items():
        decls = [field.flag, name]
        kw = dict(help=field.help, metavar=field.metavar or _METAVARS.get(field.kind))
        if field.kind == "flag":
            kw = dict(help=field.help, is_flag=True)
            if name == "dry_run":
                decls.insert(0, "-n")
        elif field.kind == "bool":
            kw.update(type=bool)
        if name == "outdir":
            kw.update(type=OutputDir("run folder"), required=True)
        elif name == "data":
            kw.update(required=True)
        elif field.kind != "flag":
            default = DEFAULTS_TEXT.get(name)
            if name == "precision":  # None: not given, so that --fp16 decides (and a contradiction is seen)
                kw.update(default=None, show_default=default)
            else:
                kw.update(default=default, show_default=default is not None)
        options.append(click.option(*decls, **kw))
        if name == "cond":
            options.append(
                click.option("--uncond", help="Train an unconditional model (same as --cond=False)", is_flag=True)
            )
        if name == "tensorboard":
            options.append(
                click.option(
                    "--no-tensorboard", help="Write no TensorBoard events (same as --tensorboard=False)", is_flag=True
                )
            )
        if name == "precision":
            options.append(
                click.option(
                    "--fp16",
                    help="Enable mixed-precision training (CUDA only); --precision overrides it",
                    metavar="BOOL",
                    type=bool,
                    default=True,
                )
            )
    options.append(
        click.option(
            "--device",
            help="Compute device (default: CUDA when available)",
            type=click.Choice(["cuda", "cpu"]),
            default=None,
        )
    )
    for option in reversed(options):
        command = option(command)
    return command


def _default_text(field, default):
    """A default as --help shows it and the option reads it back (8388608 -> '8Mi')."""
    if default is None:
        return None
    return field.text(default) if field.kind in ("nimg", "int_list", "std_list") else default


DEFAULTS_TEXT = {name: _default_text(field, DEFAULTS.get(name)) for name, field in TRAIN_FIELDS.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@_table_options
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
      edm2 train --outdir runs/config-a --data datasets/img512-sd.zip --preset edm2-img512-s-config-a --config A
    """
    from edm2.signals import StopSignal

    # From here on SIGTERM/SIGUSR1 only set a flag: one that arrives while torch is imported or the
    # dataset opened stops the run before its first step, with status 75 like a later one.
    with StopSignal() as stop:
        status = _train(stop, kw)
    click.get_current_context().exit(status)


def _train(stop, kw) -> int:
    """The body of `edm2 train` (options -> TrainOptions -> run); returns the exit status."""
    from edm2.train.options import parse_options
    from edm2.train.run import exit_status, run_training

    ctx = click.get_current_context()
    if kw.pop("uncond"):
        if ctx.get_parameter_source("cond").name == "COMMANDLINE" and kw["cond"]:
            raise click.UsageError("--cond=True and --uncond contradict each other; give one")
        kw["cond"] = False
    if kw.pop("no_tensorboard"):
        if ctx.get_parameter_source("tensorboard").name == "COMMANDLINE" and kw["tensorboard"]:
            raise click.UsageError("--tensorboard=True and --no-tensorboard contradict each other; give one")
        kw["tensorboard"] = False
    fp16 = kw.pop("fp16")
    if kw["precision"] is None:
        kw["precision"] = "fp16" if fp16 else "fp32"
    elif ctx.get_parameter_source("fp16").name == "COMMANDLINE" and fp16 != (kw["precision"] != "fp32"):
        raise click.UsageError(f"--fp16={fp16} contradicts --precision {kw['precision']}; give one")
    device = kw.pop("device")
    outdir = kw.pop("outdir")
    opts = parse_options(kw, outdir=outdir)  # ConfigError (one line naming the option) before anything is written
    result = run_training(opts, device=device, stop=stop)  # the CLI leaves the process group after
    status = exit_status(result)
    if status:
        saved = "a training state is written" if result.cur_nimg != result.start_nimg else "nothing new to save"
        click.echo(
            f"Stopped by a signal at {result.cur_nimg} images; {saved}. Re-run the same command to resume.",
            err=True,
        )
    return status

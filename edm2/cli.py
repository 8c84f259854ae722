"""The `edm2` command: one click group; each subcommand lives in `edm2.commands.<area>` and is
imported only when used, so `edm2 --help` stays fast."""

import importlib
import sys

import click

from edm2.errors import EDM2Error, one_line

# name -> "module:attribute" of a click command or group.
COMMANDS = {
    "dataset": "edm2.commands.dataset:dataset",
    "train": "edm2.commands.train:train",
    "phema": "edm2.commands.phema:phema",
    "convert-official": "edm2.commands.official:convert_official",
    "download": "edm2.commands.download:download",
    "generate": "edm2.commands.generate:generate",
    "metrics": "edm2.commands.metrics:metrics",
    "flops": "edm2.commands.flops:flops",
    "report": "edm2.commands.report:report",
    "analyze": "edm2.commands.analyze:analyze",
    "toy": "edm2.commands.toy:toy",
}


class LazySubcommands(click.Group):
    """A group whose subcommands, `lazy_commands` {name: "module:attribute"}, are imported on
    first use (`edm2` itself, `edm2 analyze`)."""

    lazy_commands: dict = {}

    def list_commands(self, ctx):
        return sorted(self.lazy_commands)

    def get_command(self, ctx, name):
        target = self.lazy_commands.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        # A command that fails to import is a bug to see, not an unknown command: let it raise.
        return getattr(importlib.import_module(module), attr)


class LazyGroup(LazySubcommands):
    """The `edm2` group: lazy subcommands, and one-line errors for every command."""

    lazy_commands = COMMANDS

    def invoke(self, ctx):
        completed = False
        try:
            result = super().invoke(ctx)
            completed = True
            return result
        except click.exceptions.Exit as e:
            completed = e.exit_code == 0
            raise
        except EDM2Error as e:
            raise click.ClickException(one_line(str(e), limit=2000)) from None
        except OSError as e:  # a disk that fills up or turns read-only during the run
            from edm2.commands.paths import OUTPUTS_KEY
            from edm2.io.atomic import describe_write_error

            message = describe_write_error(e, ctx.meta.get(OUTPUTS_KEY, []))
            if message is None:
                raise
            raise click.ClickException(message) from None
        finally:
            leave_process_group(completed)


def leave_process_group(completed: bool) -> None:
    """Leave the torch.distributed process group that a command joined, if any.

    Every command run under torchrun or SLURM ends here, so none can forget to; the teardown
    itself (barrier after success, none after an error) is edm2.distributed.shutdown_distributed.
    """
    if "torch.distributed" not in sys.modules:  # no command imported it: nothing to leave
        return
    from edm2.distributed import shutdown_distributed  # torch is loaded already

    shutdown_distributed(completed)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edm2")
def main():
    """EDM2 (Karras et al., CVPR 2024): datasets, training, post-hoc EMA, generation, metrics.

    Every example runs as written, in this order, in an empty folder (the tests run them).

    \b
    Examples (a tiny model on the embedded digits, a few minutes on a laptop CPU):
      edm2 dataset digits --dest data/digits-png --resolution 16
      edm2 dataset convert --source data/digits-png --dest data/digits.zip
      edm2 train --outdir runs/demo --data data/digits.zip --preset edm2-img64-xs --duration 2Ki \\
          --batch 32 --channels 16 --channel-mult 1,2 --num-blocks 1 --attn-resolutions 8 \\
          --snapshot 1Ki --checkpoint 2Ki --status 1Ki --precision fp32 --workers 0
      edm2 phema --indir runs/demo --outdir runs/demo/phema --outstd 0.050,0.100
      edm2 generate --net runs/demo/phema/phema-0000002-0.100.safetensors --outdir out --seeds 0-15
      edm2 flops edm2-img512-xs
    """

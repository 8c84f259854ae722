"""The options of `edm2 train`, in one table (standard library only, so the Snakefile reads it too).

    TrainOptions(outdir="runs/demo", data="digits.zip", preset="edm2-img64-xs")   checked on construction
    TRAIN_FIELDS["lr"].flag                 '--lr'
    TRAIN_FIELDS["duration"].operational    True: a run may be resumed with another duration
    OPERATIONAL                             the names of all such options

Every option is declared once, as a field of `TrainOptions` with its default and a `TrainField`
(command-line flag, kind, bounds, help, whether it is operational, whether the preset fills it).
From this table come the click options of `edm2 train` (edm2.commands.train), the loop's
options (edm2.train.loop reads a `TrainOptions`), `training_options.json` and the check of a run
folder against it (edm2.train.run), and in the workflow the training defaults and the run-folder
hash (workflow/rules/common/config.smk) and the `edm2 train` command line (common/train.smk);
tests/workflow checks that the workflow's JSON schema agrees with it.

Operational options may change between invocations of one run: where it is (outdir), how it is
launched and how fast its steps run (batch_gpu, workers, bench, channels_last, compile, fast:
equal up to the order of float reductions and, for batch_gpu, the grouping of the random draws
into micro-batches), what it writes and when (status, snapshot, checkpoint, slice, probe,
tensorboard, dry_run: the probe and TensorBoard only read the training state), and
how far it goes (duration: the learning-rate schedule alpha(t) = alpha_ref / sqrt(max(t / t_ref, 1))
of EDM2 arXiv 2312.02696 Sec. 2.3 does not depend on it, so a longer duration continues the same
run and trains only the added images). `preset` is operational because it only fills options left
unset, whose filled values are compared. Every other option changes what is computed; a run
folder holds one value of each.
"""

import dataclasses
import math
import os
from pathlib import Path

from edm2.errors import ConfigError
from edm2.presets import TRAINING_PRESETS, get_training_preset
from edm2.train.configs import CONFIG_NAMES, config_training
from edm2.utils import MAX_STD, parse_int_list, parse_nimg, parse_std_list

PRECISIONS = ("fp32", "fp16", "bf16")

# The learning-rate warm-up of the paper's runs, in images: 10 Mimg, decimal as the official code
# counts it (EDM2 arXiv 2312.02696 Figs. 16-22; learning_rate_schedule's rampup_Mimg = 10).
RAMPUP_NIMG = 10_000_000

# Kinds of option values, and how `edm2 train` reads them from text:
#   path, str     text                       int     an integer
#   bool          True/False (--cond False)  flag    present or not (--fast)
#   nimg          image count, 8Mi = 8 * 2**20   float   a finite number
#   int_list      1,2,3 ('none': empty)      std_list   0.050,0.100 (edm2 phema's ... expansion too)
KINDS = ("path", "str", "bool", "flag", "int", "nimg", "float", "int_list", "std_list")


@dataclasses.dataclass(frozen=True)
class TrainField:
    """How one training option is given and which values it accepts."""

    flag: str  # Command-line option of `edm2 train`.
    kind: str  # One of KINDS.
    help: str  # One line for `edm2 train --help`.
    operational: bool = False  # May change between invocations of one run (see the module docstring).
    preset: bool = False  # None is filled from the preset (TrainOptions.resolved).
    workflow: bool = True  # A key of the workflow's training options (outdir, data and dry_run are not).
    minimum: float | None = None  # Lower bound (None: none).
    maximum: float | None = None  # Upper bound (None: none).
    open_min: bool = False  # The lower bound itself is excluded.
    open_max: bool = False  # The upper bound itself is excluded.
    choices: tuple = ()  # The allowed values of a 'str' option (empty: any).
    min_items: int = 0  # The fewest items of a list.
    metavar: str | None = None  # Placeholder in --help (default from the kind).

    def check(self, value):
        """`value` if it is of the right kind and in bounds (None passes); else ConfigError naming
        the flag, the bound and the value. NaN and infinities are refused for every number."""
        if value is None:
            return value
        if self.kind in ("bool", "flag"):
            if not isinstance(value, bool):
                raise ConfigError(f"{self.flag} must be True or False, got {value!r}")
        elif self.kind in ("int", "nimg"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{self.flag} must be an integer, got {value!r}")
            self._check_bounds(value)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{self.flag} must be a finite number{self.bounds()}, got {value!r}")
            self._check_bounds(value)
        elif self.kind in ("int_list", "std_list"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{self.flag} must be a list, got {value!r}")
            for item in value:
                number = int if self.kind == "int_list" else float
                if isinstance(item, bool) or not isinstance(item, (int, number)) or not math.isfinite(item):
                    raise ConfigError(f"{self.flag} must hold finite numbers, got {value!r}")
                self._check_bounds(item, f" (every item of {list(value)!r})")
            if len(value) < self.min_items:
                raise ConfigError(f"{self.flag} needs at least {self.min_items} item(s), got {value!r}")
        elif self.kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ConfigError(f"{self.flag} must be a path, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{self.flag} must be a non-empty text, got {value!r}")
            if self.choices and value not in self.choices:
                raise ConfigError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def bounds(self) -> str:
        """The bounds, e.g. ' > 0', ' >= 1' or ' in [0, 1)' ('' when unbounded)."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f" in {'(' if self.open_min else '['}{low:g}, {high:g}{')' if self.open_max else ']'}"
        if low is not None:
            return f" {'>' if self.open_min else '>='} {low:g}"
        if high is not None:
            return f" {'<' if self.open_max else '<='} {high:g}"
        return ""

    def _check_bounds(self, value, where=""):
        low, high = self.minimum, self.maximum
        if (low is not None and (value < low or (self.open_min and value == low))) or (
            high is not None and (value > high or (self.open_max and value == high))
        ):
            raise ConfigError(f"{self.flag} must be{self.bounds()}{where}, got {value!r}")

    def parse(self, value):
        """The value of a command-line or configuration text ('8Mi', '1,2', 'none', 'True', '0.01');
        a value that is already parsed passes, except that an EMA std list is always sorted and
        made unique (edm2.utils.parse_std_list). Raises ConfigError for text that does not parse."""
        if value is None or self.kind in ("path", "str"):
            return value
        if self.kind == "std_list":
            return parse_std_list(value)
        if not isinstance(value, str):
            return list(value) if isinstance(value, tuple) else value
        text = value.strip()
        if self.kind == "nimg":
            return parse_nimg(text)
        if self.kind == "int_list":
            return [] if text.lower() in ("", "none") else parse_int_list(text)
        if self.kind in ("bool", "flag"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{self.flag} must be True or False, got {value!r}")
            return text.lower() in ("true", "1", "yes")
        try:
            return int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise ConfigError(
                f"{self.flag} must be {'an integer' if self.kind == 'int' else 'a number'}, got {value!r}"
            ) from None

    def text(self, value) -> str:
        """`value` as `edm2 train` reads it back (image counts in Ki/Mi/Gi when whole)."""
        if self.kind == "nimg":
            return format_nimg(value)
        if self.kind in ("int_list", "std_list"):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
        return str(value)


def format_nimg(nimg: int) -> str:
    """An image count as `edm2 train` reads it: 8388608 -> '8Mi', 131072 -> '128Ki', 1000 -> '1000'."""
    for suffix, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if nimg and nimg % (1 << shift) == 0:
            return f"{nimg >> shift}{suffix}"
    return str(nimg)


_REQUIRED = object()


def _option(default, flag, kind, help, **spec):
    """A dataclass field of TrainOptions that carries its TrainField (in the field's metadata)."""
    metadata = {"option": TrainField(flag=flag, kind=kind, help=help, **spec)}
    if default is _REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainOptions:
    """The options of `edm2 train`: the table (every field's TrainField is in TRAIN_FIELDS).

    None fields are filled from the preset by `resolved()` (docs/method.md#presets). Raises
    ConfigError on construction for a value of the wrong kind or out of bounds (NaN and
    infinities included), naming the command-line option, before anything is read or written.
    The field order is that of `training_options.json` and of the snapshots' metadata.
    """

    outdir: str = _option(
        _REQUIRED, "--outdir", "path", "Where to save the results", operational=True, workflow=False, metavar="DIR"
    )
    data: str = _option(
        _REQUIRED, "--data", "path", "Path to the dataset (ZIP or folder)", workflow=False, metavar="ZIP|DIR"
    )
    cond: bool = _option(True, "--cond", "bool", "Train class-conditional model")
    preset: str = _option(
        "edm2-img512-s",
        "--preset",
        "str",
        "Configuration preset (fills the options not given)",
        operational=True,
        choices=tuple(TRAINING_PRESETS),
    )
    config: str | None = _option(
        None,
        "--config",
        "str",
        "Config A..G of the paper's Table 1: network, loss, EMA, optimizer (default: the preset's, G for "
        "edm2-img512-s)",
        preset=True,
        choices=CONFIG_NAMES,
        metavar="A..G",
    )
    duration: int | None = _option(
        None,
        "--duration",
        "nimg",
        "Training duration in images (extending it resumes the run)",
        operational=True,
        preset=True,
        minimum=1,
    )
    batch: int | None = _option(None, "--batch", "nimg", "Total batch size in images", preset=True, minimum=1)
    channels: int | None = _option(
        None, "--channels", "int", "Channel multiplier (model_channels)", preset=True, minimum=1
    )
    dropout: float | None = _option(
        None, "--dropout", "float", "Dropout probability", preset=True, minimum=0, maximum=1, open_max=True
    )
    P_mean: float | None = _option(
        None, "--P_mean", "float", "Noise level mean: ln(sigma) ~ N(P_mean, P_std^2) (EDM2 Eq. 16)", preset=True
    )
    P_std: float | None = _option(
        None,
        "--P_std",
        "float",
        "Noise level standard deviation of ln(sigma) (EDM2 Eq. 16)",
        preset=True,
        minimum=0,
        open_min=True,
    )
    lr: float | None = _option(
        None,
        "--lr",
        "float",
        "Reference learning rate alpha_ref (EDM2 Sec. 2.3, Config E)",
        preset=True,
        minimum=0,
        open_min=True,
    )
    decay: float | None = _option(
        None,
        "--decay",
        "float",
        "Learning rate decay start t_ref, in batches (EDM2 Sec. 2.3, Config E)",
        preset=True,
        minimum=0,
        metavar="BATCHES",
    )
    rampup: int = _option(
        RAMPUP_NIMG,
        "--rampup",
        "nimg",
        "Learning-rate warm-up in images: linear from 0 to --lr (EDM2: 10000000; 0 = none)",
        minimum=0,
    )
    batch_gpu: int = _option(
        0, "--batch-gpu", "nimg", "Limit batch size per process (0 = no limit)", operational=True, minimum=0
    )
    precision: str = _option(
        "fp16",
        "--precision",
        "str",
        "Main-path precision (mixed precision on CUDA only)",
        choices=PRECISIONS,
        metavar="|".join(PRECISIONS),
    )
    loss_scaling: float | None = _option(
        None,
        "--ls",
        "float",
        "Loss scaling (default: the preset's, 1; 100 for configs A-C)",
        preset=True,
        minimum=0,
        open_min=True,
    )
    bench: bool = _option(True, "--bench", "bool", "Enable cuDNN benchmarking", operational=True)
    status: int = _option(
        128 << 10, "--status", "nimg", "Interval of status prints (0 = never)", operational=True, minimum=0
    )
    snapshot: int = _option(
        8 << 20, "--snapshot", "nimg", "Interval of network snapshots (0 = never)", operational=True, minimum=0
    )
    checkpoint: int = _option(
        128 << 20, "--checkpoint", "nimg", "Interval of training states (0 = never)", operational=True, minimum=0
    )
    slice: int | None = _option(
        None,
        "--slice",
        "nimg",
        "Train at most this many images in this invocation, then stop at a checkpoint",
        operational=True,
        minimum=0,
    )
    probe: int | None = _option(
        None,
        "--probe",
        "nimg",
        "Interval of the activation-magnitude probe on a fixed batch (default: --snapshot; 0 = no probe, "
        "no weight magnitudes, loss per sigma band or gradient norm)",
        operational=True,
        minimum=0,
    )
    tensorboard: bool = _option(
        True, "--tensorboard", "bool", "Write TensorBoard event files next to stats.jsonl", operational=True
    )
    seed: int = _option(0, "--seed", "int", "Random seed", minimum=0)
    workers: int = _option(
        2,
        "--workers",
        "int",
        "DataLoader worker processes (0 = read in the training process)",
        operational=True,
        minimum=0,
    )
    channels_last: bool = _option(
        False,
        "--channels-last",
        "flag",
        "Channels-last convolutions (faster on CPU; equal to the default up to float rounding)",
        operational=True,
    )
    compile: bool = _option(
        False,
        "--compile",
        "flag",
        "torch.compile the network (minutes to compile; equal to the default up to float rounding)",
        operational=True,
    )
    fast: bool = _option(
        False,
        "--fast",
        "flag",
        "Fast path: --compile, --channels-last, fused attention, fused Adam on CUDA (equal to the default up "
        "to float rounding; compiling takes minutes)",
        operational=True,
    )
    channel_mult: list[int] | None = _option(
        None,
        "--channel-mult",
        "int_list",
        "Per-resolution channel multipliers, e.g. 1,2 (default 1,2,3,4)",
        minimum=1,
        min_items=1,
    )
    num_blocks: int | None = _option(
        None, "--num-blocks", "int", "Residual blocks per resolution (default 3)", minimum=1
    )
    attn_resolutions: list[int] | None = _option(
        None,
        "--attn-resolutions",
        "int_list",
        "Resolutions with self-attention, e.g. 8 or none (default 16,8)",
        minimum=1,
    )
    ema_stds: list[float] = _option(
        [0.050, 0.100],
        "--ema-stds",
        "std_list",
        "Relative EMA stds sigma_rel to track and snapshot (EDM2 Sec. 3.1-3.2)",
        minimum=0,
        maximum=MAX_STD,
        open_min=True,
        open_max=True,
        min_items=1,
    )
    dry_run: bool = _option(
        False, "--dry-run", "flag", "Print training options and exit", operational=True, workflow=False
    )

    def __post_init__(self):
        for name, field in TRAIN_FIELDS.items():
            field.check(getattr(self, name))

    def resolved(self) -> "TrainOptions":
        """A copy with the preset's values in every option left None (docs/method.md#presets)."""
        missing = [name for name, field in TRAIN_FIELDS.items() if field.preset and getattr(self, name) is None]
        if not missing:
            return dataclasses.replace(self)
        preset = get_training_preset(self.preset)
        return dataclasses.replace(self, **{name: getattr(preset, name) for name in missing})

    def record(self) -> dict:
        """The options as `training_options.json` and the snapshots' metadata record them: every
        field, with `data` and `outdir` as absolute paths."""
        record = dataclasses.asdict(self)
        record["data"] = str(Path(self.data).resolve())
        record["outdir"] = str(Path(self.outdir).resolve())
        return record

    def identity(self) -> dict:
        """The options that define what a run computes (all but the operational ones), as they are."""
        return {name: getattr(self, name) for name, field in TRAIN_FIELDS.items() if not field.operational}

    def network_kwargs(self) -> dict:
        """Precond arguments other than the interface sizes and the precision (the mapping of the
        official train.py): model_channels and dropout, and the architecture options given."""
        kwargs = dict(model_channels=int(self.channels), dropout=float(self.dropout))
        if self.config != "G":
            kwargs["config"] = self.config  # recorded with the network (edm2.nn.Precond)
        if self.channel_mult is not None:
            kwargs["channel_mult"] = [int(v) for v in self.channel_mult]
        if self.num_blocks is not None:
            kwargs["num_blocks"] = int(self.num_blocks)
        if self.attn_resolutions is not None:
            kwargs["attn_resolutions"] = [int(v) for v in self.attn_resolutions]
        if self.fast and self.config == "G":  # A-F's attention (edm2.nn.ablation) has no fused variant
            kwargs["fused_attention"] = True  # recorded with the network (edm2.nn.Block)
        return kwargs

    def training(self):
        """The config's training settings (edm2.train.configs: loss, Adam betas, EMA kind, safety)."""
        return config_training(self.config)

    def loss_kwargs(self) -> dict:
        """EDM2Loss (config A: EDMLoss) arguments: ln(sigma) ~ N(P_mean, P_std^2) (EDM2 Eq. 16)."""
        return dict(P_mean=float(self.P_mean), P_std=float(self.P_std))

    def lr_kwargs(self) -> dict:
        """learning_rate_schedule arguments: alpha_ref and t_ref (EDM2 Sec. 2.3) and the warm-up,
        in decimal millions of images as the official code counts it (--rampup 10000000 = 10 Mimg)."""
        return dict(ref_lr=float(self.lr), ref_batches=float(self.decay), rampup_Mimg=self.rampup / 1e6)

    def probe_interval(self) -> int:
        """Images between activation probes (edm2.train.monitor): --probe, or --snapshot when
        not given; 0 = no probe."""
        return int(self.snapshot if self.probe is None else self.probe)

    def dataset_kwargs(self) -> dict:
        """ImageFolderDataset arguments."""
        return dict(path=str(self.data), use_labels=bool(self.cond))


TRAIN_FIELDS = {f.name: f.metadata["option"] for f in dataclasses.fields(TrainOptions)}
"""{option name: TrainField}, in the order of TrainOptions."""

OPERATIONAL = tuple(name for name, field in TRAIN_FIELDS.items() if field.operational)
"""Options that may change between invocations of one run (see the module docstring)."""

DEFAULTS = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in dataclasses.fields(TrainOptions)
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}
"""{option name: default} of every option but outdir and data (None: filled from the preset)."""


def parse_options(values: dict, **fixed) -> TrainOptions:
    """TrainOptions of option texts as a user writes them ('8Mi', '1,2', 'none', 'True'), given
    by option name; values already parsed pass. `fixed` (e.g. outdir, data) are taken as they are."""
    parsed = {name: TRAIN_FIELDS[name].parse(value) for name, value in values.items()}
    return TrainOptions(**fixed, **parsed)


def command_line(values: dict) -> list[str]:
    """The `edm2 train` arguments that give the options `values` ({name: value or its text, as
    `parse_options` takes them}; None: left to the command's default or preset), in table order:
    `--flag value` (a text as it is written, e.g. '2048Mi'), or the bare flag of a 'flag'
    option that is True."""
    args = []
    for name, field in TRAIN_FIELDS.items():
        value = values.get(name)
        if value is None:
            continue
        if field.kind == "flag":
            if value:
                args.append(field.flag)
        else:
            parsed = field.parse(value)  # ConfigError for text `edm2 train` would not read
            args += [field.flag, value.strip() if isinstance(value, str) else field.text(parsed)]
    return args


def canonical_options(values: dict) -> dict:
    """`values` ({name: value}) with every number in its kind's type (35000 and 35000.0 are the
    same decay), lists as lists: equal options give equal JSON, e.g. for the workflow's hash."""
    result = {}
    for name, value in values.items():
        kind = TRAIN_FIELDS[name].kind
        if value is None or kind in ("path", "str", "bool", "flag"):
            result[name] = value
        elif kind == "float":
            result[name] = float(value)
        elif kind in ("int", "nimg"):
            result[name] = int(value)
        else:
            result[name] = [int(v) if kind == "int_list" else float(v) for v in value]
    return result

"""FLOP counting by the official EDM2 convention (docs/method.md#flops, #official-details).

The official `count_flops.py` traces the network with `torch.jit.trace` and charges every graph
node by a fixed table; one multiply-accumulate counts as one FLOP. Tracing does not work on the
meta device, so we count at the dispatcher level instead (a `TorchDispatchMode`), where every
operation is seen with its real shapes even when the tensors hold no data. The aten ops seen
there are mapped onto the official table:

* `einsum` decomposes into `bmm` (plus views/permutes); charging `bmm` as a matmul gives the
  same count as the official rewrite of einsum into matmuls.
* `x @ w.t()` becomes `mm`; `conv2d`/`conv_transpose2d` become `convolution`; `softmax`
  becomes `_softmax`; `clip_` becomes `clamp_`; `ger`/`outer` becomes a broadcast `mul`.
  Their costs are identical to those of the traced nodes.
* `F.linear` with a bias becomes `addmm`, which the official table charges `K + 1` per output
  element (a traced `linear` node would be charged `K`); the EDM2 network has no bias, so
  its count is unaffected.

Counting a meta-device network allocates nothing, so the XXL model counts in seconds.
"""

import dataclasses
import math
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from edm2.errors import ConfigError
from edm2.io.snapshot import read_snapshot_info
from edm2.nn import Precond
from edm2.nn.ablation import CONFIGS, Conv
from edm2.nn.layers import MPConv, normalize
from edm2.presets import TRAINING_PRESETS, network_kwargs

# --- The official cost table (docs/method.md#flops), keyed by aten op name as seen at dispatch level ------

# Charged numel(out) per call.
_UNIT_OPS = {
    "add", "sub", "rsub", "mul", "div", "exp", "pow", "reciprocal", "square", "sqrt", "rsqrt",
    "sin", "cos", "log", "eq", "gt", "neg", "mean", "sum", "clamp_min", "floor_divide",
    "addcmul", "outer", "ger", "affine_grid_generator",
}  # fmt: skip
# Charged k * numel(out) per call.
_ELEMENTWISE_FACTOR = {
    "lerp": 2, "leaky_relu": 2, "clamp": 2, "clip": 2,
    "silu": 3, "sigmoid": 3, "softmax": 3, "_softmax": 3,
    "group_norm": 4, "native_group_norm": 4, "layer_norm": 4, "native_layer_norm": 4,
    "upsample_bilinear2d": 4,
    "gelu": 14,
}  # fmt: skip
for _name in _UNIT_OPS:
    _ELEMENTWISE_FACTOR[_name] = 1
# Charged numel(input) per call.
_INPUT_OPS = {"linalg_vector_norm", "avg_pool2d"}
# Matrix products: numel(out) * K, K = last dim of the first operand.
_MATMUL_OPS = {"mm", "bmm", "matmul", "mv", "dot", "linear"}
# Free: data movement, shape changes, casts, constants, dropout (docs/method.md#flops "etc." row).
_FREE_OPS = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "expand", "permute",
    "transpose", "t", "unsqueeze", "squeeze", "select", "slice", "narrow", "unbind", "split",
    "split_with_sizes", "chunk", "flatten", "unflatten", "alias", "detach", "cat", "stack",
    "clone", "copy", "copy_", "_to_copy", "to", "contiguous", "lift_fresh", "lift_fresh_copy",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full",
    "fill", "fill_", "zero_", "scalar_tensor", "arange", "repeat", "tile", "expand_as",
    "dropout", "native_dropout", "bernoulli", "bernoulli_", "constant_pad_nd", "pad", "flip",
    "embedding", "upsample_nearest2d", "_local_scalar_dense", "index_select", "_unsafe_index",
    "resize_", "set_", "_has_compatible_shallow_copy_type", "is_same_size", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "result_type", "_assert_async",
}  # fmt: skip

# Report names: dispatch-level ops shown under the node kind the official table uses.
_REPORT_NAME = {
    "mm": "matmul", "bmm": "matmul", "mv": "matmul", "dot": "matmul",
    "convolution": "_convolution", "_softmax": "softmax", "clip": "clamp",
    "native_group_norm": "group_norm", "native_layer_norm": "layer_norm", "ger": "outer",
}  # fmt: skip


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def op_cost(name: str, args, out) -> int | None:
    """FLOPs of one aten op `name` (overload packet name, trailing `_` allowed) by the official
    table; 0 for free ops; None for ops the table does not know (not counted, as officially)."""
    base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
    if name in _FREE_OPS or base in _FREE_OPS:
        return 0
    result = _first_tensor(out)
    if base in _ELEMENTWISE_FACTOR:
        return _ELEMENTWISE_FACTOR[base] * result.numel()
    if base in _INPUT_OPS:
        return args[0].numel()
    if base in _MATMUL_OPS:  # docs/method.md#flops: numel(out) * K
        return result.numel() * int(args[0].shape[-1])
    if base in ("addmm", "baddbmm"):  # docs/method.md#flops: numel(out) * (K + 1)
        return result.numel() * (int(args[1].shape[-1]) + 1)
    if base in ("convolution", "_convolution"):  # docs/method.md#flops: numel(out) * prod(weight.shape[1:])
        return result.numel() * _numel(args[1].shape[1:])
    return None


@dataclasses.dataclass
class OpCount:
    """One row of the per-op table."""

    name: str  # op kind, named as in the official table (e.g. `_convolution`, `matmul`)
    calls: int  # number of calls
    flops: int  # FLOPs charged to them


@dataclasses.dataclass
class FlopCount:
    """Result of `count_flops`: totals and a per-op table (sorted by cost, free ops as `Other`)."""

    total_flops: int  # FLOPs of one evaluation (one multiply-add = one FLOP)
    total_params: int  # number of parameters (not buffers)
    ops: list[OpCount]  # per op kind, most expensive first; zero-cost ops pooled under `Other`
    unknown: dict[str, int]  # ops the official table does not know -> calls (not counted)

    @property
    def gflops(self) -> float:
        return self.total_flops / 1e9

    @property
    def mparams(self) -> float:
        return self.total_params / 1e6

    def table(self) -> str:
        """The per-op table as fixed-width text (op, calls, Gflops, share)."""
        lines = [f"{'op':<24}{'calls':>8}{'Gflops':>12}{'share':>9}", "-" * 53]
        for row in self.ops:
            share = row.flops / self.total_flops if self.total_flops else 0.0
            lines.append(f"{row.name:<24}{row.calls:>8}{row.flops / 1e9:>12.4f}{share:>9.2%}")
        lines.append("-" * 53)
        lines.append(f"{'Total':<24}{sum(r.calls for r in self.ops):>8}{self.gflops:>12.4f}{1:>9.2%}")
        return "\n".join(lines)


class FlopCounterMode(TorchDispatchMode):
    """Dispatch-level op counter; use as a context manager around any computation."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}
        self.flops: dict[str, int] = {}
        self.unknown: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        cost = op_cost(name, args, out)
        if cost is None:
            self.unknown[name] = self.unknown.get(name, 0) + 1
        else:
            stem = name[:-1] if name.endswith("_") and not name.startswith("_") else name
            key = _REPORT_NAME.get(stem, stem) if cost else "Other"
            self.calls[key] = self.calls.get(key, 0) + 1
            self.flops[key] = self.flops.get(key, 0) + cost
        return out

    def result(self, total_params: int = 0) -> FlopCount:
        rows = [OpCount(k, self.calls[k], self.flops[k]) for k in self.calls if k != "Other"]
        rows.sort(key=lambda r: (-r.flops, r.name))
        if "Other" in self.calls:
            rows.append(OpCount("Other", self.calls["Other"], 0))
        return FlopCount(
            total_flops=sum(self.flops.values()), total_params=total_params, ops=rows, unknown=dict(self.unknown)
        )


def _default_inputs(net: torch.nn.Module, batch_size: int, device: torch.device):
    """Official inputs (docs/method.md#flops): zeros [N, C, R, R], sigma zeros [N], labels zeros [N, label_dim]."""
    for attr in ("img_channels", "img_resolution", "label_dim"):
        if not hasattr(net, attr):
            raise TypeError(f"count_flops: {type(net).__name__} has no `{attr}`; pass `args=(...)` explicitly")
    x = torch.zeros([batch_size, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    sigma = torch.zeros([batch_size], device=device)
    labels = torch.zeros([batch_size, net.label_dim], device=device)
    return (x, sigma, labels)


def count_flops(
    net: torch.nn.Module,
    batch_size: int = 1,
    args=None,
    kwargs=None,
    forced_weight_norm: bool = True,
) -> FlopCount:
    """Count FLOPs and parameters of one forward of `net` by the official convention (docs/method.md#flops).

    By default `net` is an `edm2.nn.Precond` and is called as the official script does:
    `net(zeros[N, C, R, R], zeros[N], zeros[N, label_dim])` with `N = batch_size` (1: per-sample
    count of a single denoiser evaluation), no logvar head, without gradients. Inputs are created
    on the device of the network's first parameter, so a meta-device network is counted without
    allocating anything. Pass `args`/`kwargs` to call another module.

    `forced_weight_norm=True` also charges the forced weight normalisation that every MPConv
    runs in a training-mode forward (docs/method.md#mp-layers): the official figures (XS 45.75 ...
    XXL 555.12 Gflops) include it and are not reproduced without it. It is computed on the side
    (the weights are not modified) while the network runs in eval mode, so dropout stays free as
    in the official table. `False` counts a plain eval-mode forward.

    The ablation configs A-F (`Precond(config=...)`) are charged the same way on every learned
    conv/linear weight (not on biases or group-norm parameters), whether or not the config
    normalises its stored weights: Table 1 of the paper prints D and E alike although only E
    does, so its figures charge every config alike, and only then do the configs' differences
    from G match Table 1's (docs/method.md#flops-of-the-ablation-configs). For A-D this is a
    bookkeeping charge of 2 flops per weight, not an operation those networks perform.
    """
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if args is None:
        args = _default_inputs(net, batch_size, device)

    def forced_norm_hook(module, _inputs):
        # The forced normalisation's arithmetic, `normalize(float32(weight))`, without the
        # in-place overwrite (docs/method.md#mp-layers).
        w = module.weight
        normalize(w.to(torch.float64 if w.dtype == torch.float64 else torch.float32))

    hooks = []
    if forced_weight_norm:
        learned = [m for m in net.modules() if isinstance(m, (MPConv, Conv)) and m.weight is not None]
        hooks = [m.register_forward_pre_hook(forced_norm_hook) for m in learned]
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode() as counter:
            net(*args, **(kwargs or {}))
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return counter.result(total_params=sum(p.numel() for p in net.parameters()))


def network_kwargs_of(target) -> dict:
    """`Precond` constructor arguments for `target`: a training preset name (docs/method.md#presets) or the
    path of an edm2 snapshot (`.safetensors`, read from its metadata without loading weights)."""
    target = str(target)
    if target in TRAINING_PRESETS:
        return network_kwargs(target)
    path = Path(target)
    if path.is_file():
        return read_snapshot_info(path).network_kwargs
    raise ConfigError(
        f"{target!r} is neither a snapshot file nor a training preset; give a .safetensors snapshot "
        f"or one of {', '.join(TRAINING_PRESETS)}"
    )


def count_flops_of(target, forced_weight_norm: bool = True, config: str | None = None) -> tuple[FlopCount, dict]:
    """Count a training preset or snapshot (see `network_kwargs_of`) on the meta device;
    returns `(FlopCount, network_kwargs)`. Takes about a second even for XXL. `config` 'A'..'G'
    counts the network of that Table 1 config at the target's size instead (None: the target's
    own; docs/method.md#ablation-ladder); raises ConfigError for an unknown config."""
    kwargs = network_kwargs_of(target)
    if config is not None:
        if config not in CONFIGS:
            raise ConfigError(f"unknown network config {config!r}; use one of {', '.join(CONFIGS)}")
        kwargs = {k: v for k, v in kwargs.items() if k != "config"}
        kwargs.update({} if config == "G" else {"config": config})
    with torch.device("meta"):
        net = Precond(**kwargs)
    return count_flops(net, forced_weight_norm=forced_weight_norm), kwargs

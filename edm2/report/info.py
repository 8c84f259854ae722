"""Model size facts for the tables: parameter count and Gflops of one denoiser evaluation,
counted on the meta device (no weights loaded) by the official convention (docs/method.md#flops)."""

from pathlib import Path

from edm2.errors import FormatError
from edm2.io.snapshot import build_network, read_snapshot_info
from edm2.metrics.flops import count_flops


def model_info(net_path, run: str | None = None, label: str | None = None) -> dict:
    """Facts about the network stored in a snapshot / phema file."""
    net_path = Path(net_path)
    info = read_snapshot_info(net_path)
    try:
        net = build_network(info.network_kwargs, device="meta")
    except TypeError as e:
        raise FormatError(f"{net_path}: network settings {info.network_kwargs} do not build a Precond ({e})") from None
    count = count_flops(net)
    kwargs = info.network_kwargs
    return {
        "run": run or net_path.parent.name,
        "label": label or run or net_path.parent.name,
        "mparams": count.total_params / 1e6,
        "gflops": count.total_flops / 1e9,
        "total_params": count.total_params,
        "total_flops": count.total_flops,
        "img_resolution": kwargs.get("img_resolution"),
        "img_channels": kwargs.get("img_channels"),
        "label_dim": kwargs.get("label_dim"),
        "network_kwargs": kwargs,
        "encoder": info.encoder,
        "kimg": info.kimg,
        "network": str(net_path),
    }

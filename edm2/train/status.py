"""Status reporting of a training run: the network summary, the status line, `stats.jsonl`, the
opening and closing lines and the copy of every rank's output in `log.txt`.

The status line and `stats.jsonl` follow the official training loop's report
(training/training_loop.py of NVlabs/edm2): progress in kimg, wall time, seconds per tick and
per kimg, maintenance time and peak memory; the means of every reported statistic since the
last status go to one JSON line.
"""

import contextlib
import sys
import time
from pathlib import Path

import torch

from edm2.distributed import print0
from edm2.train.checkpoint import list_snapshots, list_training_states
from edm2.train.stats import cpu_memory_gb, format_time, stats_json_line


def print_network_summary(net, inputs, max_nesting: int = 2) -> None:
    """Run one forward with `inputs` (in the net's current mode) and print a module table: name,
    parameters, buffers, output shape and dtype, as the official misc.print_module_summary.

    In training mode this forward applies forced weight normalisation to every MPConv weight it
    touches, exactly as the official module summary does before DDP is built (docs/method.md#training).
    """
    modules = {name: m for name, m in net.named_modules() if name and name.count(".") < max_nesting}
    outputs = {}

    def hook(name):
        def fn(_module, _inputs, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor):
                outputs.setdefault(name, (str(list(out.shape)), str(out.dtype).replace("torch.", "")))

        return fn

    hooks = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            net(*inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = [("Module", "Parameters", "Buffers", "Output shape", "Datatype")]
    for name, module in modules.items():
        if name in outputs:
            params = sum(p.numel() for p in module.parameters())
            buffers = sum(b.numel() for b in module.buffers())
            rows.append((name, str(params), str(buffers), *outputs[name]))
    total = sum(p.numel() for p in net.parameters()), sum(b.numel() for b in net.buffers())
    rows.append(("Total", str(total[0]), str(total[1]), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for i, row in enumerate(rows):
        if i in (1, len(rows) - 1):
            print("  ".join("-" * w for w in widths))
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()


class StatusReporter:
    """The status line, `stats.jsonl` and timing of docs/method.md#training (collective: every rank calls `report`)."""

    def __init__(
        self, run_dir, stats, device, cur_nimg, elapsed_before, start_time, rank, write_line, bar=None, on_report=None
    ):
        self.path = Path(run_dir) / "stats.jsonl"
        self.stats = stats
        self.device = device
        self.rank = rank
        self.write_line = write_line
        self.elapsed_before = elapsed_before
        self.start_time = start_time
        self.prev_time = time.time()
        self.prev_nimg = cur_nimg
        self.training_time = 0.0  # pure step time since the last status
        self.bar = bar  # the terminal's progress bar (rank 0), which shows the latest mean loss
        self.on_report = on_report  # on_report(cur_nimg, means) on rank 0 after each line (TensorBoard)

    def report(self, cur_nimg) -> None:
        now = time.time()
        s = self.stats
        if self.device.type == "cuda":
            gpu_mem = torch.cuda.max_memory_allocated(self.device) / 2**30
            gpu_reserved = torch.cuda.max_memory_reserved(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gpu_mem = gpu_reserved = 0.0
        sec_per_kimg = self.training_time / max(cur_nimg - self.prev_nimg, 1) * 1e3
        fields = [
            ("kimg", f"{s.report0('Progress/kimg', cur_nimg / 1e3):<9.1f}"),
            ("time", f"{format_time(s.report0('Timing/total_sec', self.elapsed_before + now - self.start_time)):<12s}"),
            ("sec/tick", f"{s.report0('Timing/sec_per_tick', now - self.prev_time):<8.2f}"),
            ("sec/kimg", f"{s.report0('Timing/sec_per_kimg', sec_per_kimg):<7.3f}"),
            ("maintenance", f"{s.report0('Timing/maintenance_sec', now - self.prev_time - self.training_time):<7.2f}"),
            ("cpumem", f"{s.report0('Resources/cpu_mem_gb', cpu_memory_gb()):<6.2f}"),
            ("gpumem", f"{s.report0('Resources/peak_gpu_mem_gb', gpu_mem):<6.2f}"),
            ("reserved", f"{s.report0('Resources/peak_gpu_mem_reserved_gb', gpu_reserved):<6.2f}"),
        ]
        means = s.flush()
        if self.rank == 0:
            self.write_line(("Status: " + " ".join(f"{name} {value}" for name, value in fields)).rstrip())
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(stats_json_line(means))
            if self.bar is not None and means.get("Loss/loss") is not None:
                self.bar.set_postfix_str(f"loss {means['Loss/loss']:.4g}", refresh=False)
            if self.on_report is not None:
                self.on_report(cur_nimg, means)
        self.prev_time = now
        self.prev_nimg = cur_nimg
        self.training_time = 0.0


def announce_start(cur_nimg: int, stop_at_nimg: int, total_nimg: int, snapshot_nimg: int | None) -> bool:
    """The opening lines on rank 0; False when the run has nothing left to train."""
    if cur_nimg >= total_nimg:
        print0(f"Training already reached {cur_nimg // 1000} kimg (duration {total_nimg // 1000} kimg); nothing to do.")
        return False
    print0(f"Training from {cur_nimg // 1000} kimg to {stop_at_nimg // 1000} kimg:")
    if snapshot_nimg and snapshot_nimg > total_nimg:
        print0(
            f"Warning: --snapshot {snapshot_nimg} is longer than --duration {total_nimg}: the only EMA "
            "snapshots are those at 0 kimg, so post-hoc EMA has nothing trained to work with; "
            f"set --snapshot to at most {total_nimg} (e.g. a quarter of it)."
        )
    print0()
    return True


def print_summary(run_dir, result, seconds: float) -> None:
    """The closing lines on rank 0: images trained, time and rate, where the results are."""
    trained = result.cur_nimg - result.start_nimg
    rate = trained / seconds if seconds > 0 else float("nan")
    snapshots = list_snapshots(run_dir)
    states = list_training_states(run_dir)
    if result.cur_nimg >= result.total_nimg:
        state = f"finished the duration of {result.total_nimg // 1000} kimg"
    else:
        state = f"stopped at {result.cur_nimg // 1000} of {result.total_nimg // 1000} kimg (re-run to continue)"
    print0(f"Trained {trained} images in {format_time(seconds)} ({rate:.1f} img/s); {state}.")
    print0(
        f"{run_dir}: {len(snapshots)} snapshots (newest {snapshots[-1] if snapshots else '-'}), "
        f"newest training state {states[0].name if states else '-'}."
    )


class _Tee:
    def __init__(self, stream, file):
        self.stream = stream
        self.file = file

    def write(self, text):
        if text:
            self.file.write(text)
            self.file.flush()
            if self.stream is not None:
                self.stream.write(text)
        return len(text)

    def flush(self):
        self.file.flush()
        if self.stream is not None:
            self.stream.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path):
    """Copy everything printed to stdout and stderr into `path` (append mode) while active."""
    with open(path, "a", encoding="utf-8") as f:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, f), _Tee(old_err, f)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err

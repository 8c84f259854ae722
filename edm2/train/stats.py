"""Training statistics: the per-step collector, the status line and `stats.jsonl` (docs/method.md#training)."""

import math
import os
import time

import torch
import torch.distributed as tdist


class StatsCollector:
    """Running means of reported values since the last flush.

    `report(name, tensor)` counts every finite element of the tensor (docs/method.md#training) and keeps the
    sums on the tensor's device, so a step costs no host sync; `flush()` all-reduces the sums
    across ranks and returns `{name: mean}` (NaN for a name with no data since the last flush).
    `report0(name, value)` records a rank-0-only value (timings, memory) for the next flush.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self._sums = {}  # name -> float64 tensor [count, sum] since the last flush
        self._local = {}  # name -> (count, sum) of rank-0 values since the last flush
        self._reduced = []  # names reported with report(): identical on every rank
        self._rank0 = []  # names reported with report0()

    def report(self, name: str, value) -> None:
        if name not in self._reduced:
            self._reduced.append(name)
        if isinstance(value, torch.Tensor):
            elems = value.detach().flatten().to(torch.float32)
            finite = torch.isfinite(elems)
            total = torch.where(finite, elems, 0).sum(dtype=torch.float64)
            moments = torch.stack([finite.sum().to(torch.float64), total]).to(self.device)
        else:
            value = float(value)
            ok = math.isfinite(value)
            moments = torch.tensor([float(ok), value if ok else 0.0], dtype=torch.float64, device=self.device)
        if name in self._sums:
            self._sums[name] += moments
        else:
            self._sums[name] = moments

    def report_groups(self, names: list, values: torch.Tensor, groups: torch.Tensor) -> None:
        """Report each element of `values` [N] under `names[groups[i]]` (groups [N], integers in
        [0, len(names))), finite elements only, without a host sync: e.g. the loss per sigma band."""
        for name in names:
            if name not in self._reduced:
                self._reduced.append(name)
        values = values.detach().flatten().to(torch.float64)
        finite = torch.isfinite(values)
        groups = groups.flatten().to(torch.int64)
        counts = torch.zeros(len(names), dtype=torch.float64, device=values.device)
        counts.index_add_(0, groups, finite.to(torch.float64))
        totals = torch.zeros(len(names), dtype=torch.float64, device=values.device)
        totals.index_add_(0, groups, torch.where(finite, values, 0))
        moments = torch.stack([counts, totals], dim=1).to(self.device)  # [len(names), 2]
        for i, name in enumerate(names):
            if name in self._sums:
                self._sums[name] += moments[i]
            else:
                self._sums[name] = moments[i].clone()

    def report0(self, name: str, value: float) -> float:
        if name not in self._rank0:
            self._rank0.append(name)
        count, total = self._local.get(name, (0, 0.0))
        self._local[name] = (count + 1, total + float(value))
        return value

    def flush(self) -> dict:
        """Means since the last flush, reduced over ranks (collective: every rank must call it)."""
        zeros = torch.zeros(2, dtype=torch.float64, device=self.device)
        stacked = torch.stack([self._sums.get(n, zeros) for n in self._reduced] + [zeros])
        if tdist.is_initialized() and tdist.get_world_size() > 1:
            tdist.all_reduce(stacked)
        stacked = stacked.cpu().tolist()
        means = {}
        for name, (count, total) in zip(self._reduced, stacked):
            means[name] = total / count if count > 0 else math.nan
        for name in self._rank0:
            count, total = self._local.get(name, (0, 0.0))
            means[name] = total / count if count > 0 else math.nan
        self._sums = {}
        self._local = {}
        return means


def format_time(seconds: float) -> str:
    """'42s', '3m 07s', '5h 03m 07s', '2d 04h 11m' as in the official status lines."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {s // 3600 % 24:02d}h {s // 60 % 60:02d}m"


def cpu_memory_gb() -> float:
    """Resident memory of this process and its children, in GiB."""
    try:
        import psutil

        proc = psutil.Process(os.getpid())
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**30
    except ImportError:  # psutil missing: this process only, from /proc
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        except OSError:
            return math.nan


def stats_json_line(means: dict, timestamp: float | None = None) -> str:
    """One `stats.jsonl` line: means with %g, Progress/kimg and timestamp with 3 decimals, NaN as NaN."""
    fmt = {"Progress/kimg": "%.3f", "timestamp": "%.3f"}
    items = list(means.items()) + [("timestamp", time.time() if timestamp is None else timestamp)]
    parts = [f'"{name}": ' + (fmt.get(name, "%g") % value if math.isfinite(value) else "NaN") for name, value in items]
    return "{" + ", ".join(parts) + "}\n"

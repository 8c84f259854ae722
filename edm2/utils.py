"""Small parsers shared by the commands, and lazy package exports."""

import bisect
import collections.abc
import importlib
import operator
import re

from edm2.errors import ConfigError


def exp_to_std(exp):
    """Relative std sigma_rel of a power-function EMA profile with exponent gamma (EDM2, arXiv
    2312.02696, Eq. 123; docs/method.md#ema): sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))). A float, or
    a numpy array element-wise (`edm2.ema.maths.exp_to_std` is this formula in float64)."""
    return ((exp + 1) / (exp + 2) ** 2 / (exp + 3)) ** 0.5


# The largest EMA length with a valid exponent: gamma = 0 gives sqrt(1/12) = 0.288675; a larger
# sigma_rel needs gamma < 0, a profile that rises towards t = 0, outside the family the paper
# defines (gamma >= 0, Eq. 3 and Appendix C.1) and the EMA update of Eq. 127 assumes.
MAX_STD = exp_to_std(0.0)

_SUFFIXES = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def parse_nimg(value) -> int:
    """Parse an image count: an integer or one with a binary suffix Ki/Mi/Gi ('8Mi' = 8 * 2**20)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(\d+)\s*(Ki|Mi|Gi)?", text)
    if not m:
        raise ConfigError(f"{value!r} is not an image count; use an integer or one with Ki/Mi/Gi, e.g. 8Mi")
    return int(m.group(1)) * _SUFFIXES.get(m.group(2), 1)


MAX_INT = (1 << 63) - 1  # seeds and other integers of a list fit an int64
MAX_LIST = 1 << 16  # integers `parse_int_list` expands into a list


class IntRanges(collections.abc.Sequence):
    """The integers of inclusive ranges, in the order given, without materialising them: `len`,
    indexing, slicing (a step of 1, giving another `IntRanges`) and iteration. What
    `parse_int_ranges` returns for `--seeds`, so that '0-4294967295' costs nothing up front."""

    def __init__(self, ranges):
        self.ranges = [r for r in ranges if len(r)]
        self._starts = [0]
        for r in self.ranges:
            self._starts.append(self._starts[-1] + len(r))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index):
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise ValueError("IntRanges slices take a step of 1")
            parts = []
            for r, first in zip(self.ranges, self._starts):
                lo, hi = max(start - first, 0), min(stop - first, len(r))
                if lo < hi:
                    parts.append(r[lo:hi])
            return IntRanges(parts)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("IntRanges index out of range")
        k = bisect.bisect_right(self._starts, index) - 1
        return self.ranges[k][index - self._starts[k]]

    def __iter__(self):
        for r in self.ranges:
            yield from r

    def __eq__(self, other):
        if isinstance(other, IntRanges):
            other = other.ranges
        elif not isinstance(other, (list, tuple, range)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self):
        return "IntRanges(" + ",".join(f"{r.start}-{r.stop - 1}" for r in self.ranges) + ")"


def parse_int_ranges(value) -> IntRanges:
    """Parse 'a,b,c-d' (ranges inclusive, integers in [0, 2^63 - 1]) into a lazy `IntRanges`,
    e.g. '0-3,7' -> 0, 1, 2, 3, 7; a list or range of ints is taken as it is. Raises ConfigError."""
    if isinstance(value, range):
        return IntRanges([value])
    if isinstance(value, (list, tuple)):
        return IntRanges([range(int(v), int(v) + 1) for v in value])
    ranges = []
    for part in str(value).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{1,30})-(\d{1,30})", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"range {part!r} is empty; write it as low-high")
        elif re.fullmatch(r"\d{1,30}", part):
            lo = hi = int(part)
        else:
            raise ConfigError(f"{part!r} in {value!r} is not an integer or a range a-b")
        if hi > MAX_INT:
            raise ConfigError(f"{part!r} in {value!r} exceeds the largest integer allowed, {MAX_INT}")
        ranges.append(range(lo, hi + 1))
    return IntRanges(ranges)


def parse_int_list(value, limit: int = MAX_LIST) -> list[int]:
    """Parse 'a,b,c-d' (ranges inclusive) into a list of ints, e.g. '0-3,7' -> [0, 1, 2, 3, 7].
    Raises ConfigError for a malformed list or one of more than `limit` integers (use
    `parse_int_ranges` for long ones: it does not expand them)."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    ranges = parse_int_ranges(value)
    if len(ranges) > limit:
        raise ConfigError(f"{value!r} has {len(ranges)} integers, more than the limit of {limit}")
    return list(ranges)


def kimg_to_nimg(kimg: int) -> int:
    """Smallest multiple of 1024 with nimg // 1000 == kimg (docs/method.md#ema)."""
    nimg = (kimg * 1000 + 999) // 1024 * 1024
    assert nimg // 1000 == kimg
    return nimg


def lazy_exports(package: str, exports: dict):
    """`(__getattr__, __dir__)` for a package whose names {name: module} import on first use."""

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process receive SIGKILL when its parent dies, even by SIGKILL.

    Linux's PR_SET_PDEATHSIG through libc; elsewhere a no-op (workers then notice a dead parent
    only where they poll for it). If the parent died before the call, exit at once.
    """
    import ctypes
    import ctypes.util
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent is already gone (we were re-parented)
        os._exit(1)


def parse_std_list(text) -> list[float]:
    """Parse a comma-separated std list with the `...` expansion of docs/method.md#ema

    `a,b,...,c` inserts `b + step*m` for m = 1..k with step = b - a and
    k = round((c - b)/step - 1) (accumulated floats, not rounded). The result is sorted and
    unique; every value must satisfy 0 < std < MAX_STD = sqrt(1/12) = 0.288675. A float or a list passes through.
    """
    values = parse_number_list(text)
    bad = [v for v in values if not 0 < v < MAX_STD]
    if bad:
        raise ConfigError(
            f"EMA std {bad[0]:g} is outside the valid range 0 < std < {MAX_STD:.6f} = sqrt(1/12), where the "
            "profile exponent gamma stays >= 0 (docs/method.md#ema)"
        )
    return values


def parse_number_list(text) -> list[float]:
    """A comma-separated list of numbers with the `...` expansion of `parse_std_list` (also used
    for the guidance search's grids, e.g. '1.0,1.5,...,3.0'), sorted and unique; no bounds."""
    if isinstance(text, (int, float)):
        values = [float(text)]
    elif isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        tokens = [t.strip() for t in str(text).split(",")]
        if "" in tokens:
            raise ConfigError(f"{text!r}: empty item in the std list; separate numbers with single commas")
        values = []
        for idx, token in enumerate(tokens):
            if token == "...":
                if idx < 2 or "..." in tokens[idx - 2 : idx] or idx + 1 >= len(tokens) or tokens[idx + 1] == "...":
                    raise ConfigError(
                        f"{text!r}: '...' needs two numbers before it and one after, e.g. 0.010,0.015,...,0.250"
                    )
                try:
                    last = float(tokens[idx + 1])
                except ValueError:
                    raise ConfigError(f"{text!r}: {tokens[idx + 1]!r} is not a number") from None
                prev = values[-1]
                step = prev - values[-2]
                if step == 0:
                    raise ConfigError(f"{text!r}: the two numbers before '...' must differ")
                k = (last - prev) / step - 1
                if k < 1 - 1e-4 or abs(k - round(k)) > 1e-4:
                    raise ConfigError(
                        f"{text!r}: {last} is not reachable from {prev} in whole steps of {step:g}; "
                        "fix the end value or the step"
                    )
                if len(values) + k > MAX_LIST:
                    raise ConfigError(f"{text!r}: '...' expands to more than {MAX_LIST} values, the limit")
                for m in range(1, int(round(k)) + 1):
                    values.append(prev + step * m)
            else:
                if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", token):
                    raise ConfigError(f"{text!r}: {token!r} is not a number")
                values.append(float(token))
    return sorted(set(values))

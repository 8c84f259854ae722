"""The cached guidance search (docs/evaluation.md#the-guidance-search): which guidance settings
to evaluate in each round, from the values measured in the rounds before. Standard library only:
the Snakefile imports it to name the files of the first round.

A search minimises one metric over the axes of a guidance setting, one axis after the other, in
the order of the guidance interval paper's recipe (Kynkaanniemi et al. 2024, Section 4.2): the
guidance weight w, then the interval's upper end sigma_hi with sigma_lo at 0, then sigma_lo. With
two guides (classifier-free guidance and autoguidance together, `mix`: arXiv 2406.02507, App.
B.2) the mix alpha in [0, 1] is searched right after the weight, at the best weight. Each
axis is first screened on a coarse grid, then refined by `bisect` rounds; a round evaluates the
midpoints between the best value so far and its evaluated neighbours on that axis (at the end of
the evaluated range, half a spacing beyond it), so the bracket around the optimum halves each
round. The axes not being searched stay at their best values so far (at the start: no interval).
Screening uses a smaller image count (the interval paper: 5,000 instead of 50,000, "at least for
an initial run"); the `confirm` best screened settings are then evaluated at the full count and
seed ranges, and the best of those is the result (the autoguidance paper, Appendix B.1, also
re-evaluates around its optimum to account for the noise of the metric).

Every evaluation is one file named after its setting (`Point.name`: weight, interval, image
count and seed ranges), so extending a grid, adding a bisection round or a confirmation re-uses
every evaluation already made.
"""

import dataclasses
import math
import re

from edm2.errors import ConfigError
from edm2.utils import parse_number_list

AXES = ("weight", "mix", "sigma_hi", "sigma_lo")  # the order searched (the interval paper's recipe, mix after w)
UPPER = {"mix": 1.0}  # axes bounded above: alpha in [0, 1]
DECIMALS = 3  # values in file names: 3 decimals, as the EMA lengths
_NAME = re.compile(
    r"^w(?P<weight>\d+\.\d{3})(-m(?P<mix>\d+\.\d{3}))?(-hi(?P<sigma_hi>\d+\.\d{3}))?(-lo(?P<sigma_lo>\d+\.\d{3}))?"
    r"-n(?P<num>\d+)x(?P<ranges>\d+)$"
)


@dataclasses.dataclass(frozen=True)
class Point:
    """One evaluated guidance setting: weight w, the mix alpha of two guides (None: the guidance
    setting's own), the interval (sigma_lo, sigma_hi] (None: no limit on that side), and the
    images per seed range and number of seed ranges of its evaluation."""

    weight: float
    num: int
    ranges: int
    sigma_hi: float | None = None
    sigma_lo: float | None = None
    mix: float | None = None

    @property
    def name(self) -> str:
        """The file stem of the evaluation, e.g. 'w2.100-hi2.900-lo0.280-n5000x1' ('w2.100-m0.500-...'
        with a mix)."""
        parts = [f"w{self.weight:.{DECIMALS}f}"]
        if self.mix is not None:
            parts.append(f"m{self.mix:.{DECIMALS}f}")
        if self.sigma_hi is not None:
            parts.append(f"hi{self.sigma_hi:.{DECIMALS}f}")
        if self.sigma_lo is not None:
            parts.append(f"lo{self.sigma_lo:.{DECIMALS}f}")
        parts.append(f"n{self.num}x{self.ranges}")
        return "-".join(parts)

    def value(self, axis: str):
        return getattr(self, axis)

    def setting_key(self) -> tuple:
        """Order among equal values: the smaller weight, the setting's own mix, then the smaller
        mix, then the narrower interval."""
        hi = self.sigma_hi if self.sigma_hi is not None else math.inf
        return (self.weight, -1.0 if self.mix is None else self.mix, hi, -(self.sigma_lo or 0.0))


def parse_point_name(name: str) -> Point:
    """`Point.name` -> Point; ConfigError naming the bad name otherwise."""
    m = _NAME.match(name)
    if m is None:
        raise ConfigError(
            f"{name!r} is not a search point name like 'w2.100-n5000x1' or 'w2.100-m0.500-hi2.900-lo0.280-n5000x1'"
        )
    opt = {k: float(m.group(k)) for k in ("mix", "sigma_hi", "sigma_lo") if m.group(k) is not None}
    return Point(float(m.group("weight")), int(m.group("num")), int(m.group("ranges")), **opt)


def _round(v: float) -> float:
    return round(float(v), DECIMALS)


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What a search evaluates: `axes` [(axis, coarse grid)] in the order searched, `bisect`
    refinement rounds per axis, the screening size (`num`, `ranges`), the full size of the
    confirmation (`full_num`, `full_ranges`) and how many screened settings are confirmed."""

    axes: tuple
    bisect: int
    num: int
    ranges: int
    full_num: int
    full_ranges: int
    confirm: int = 1

    def __post_init__(self):
        names = [a for a, _ in self.axes]
        if not names or names[0] != "weight" or any(a not in AXES for a in names) or len(set(names)) != len(names):
            raise ConfigError(f"search axes {names}: give weight first, then optionally mix, sigma_hi and sigma_lo")
        for axis, grid in self.axes:
            if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
                raise ConfigError(f"search axis {axis}: the grid {list(grid)} must hold finite values >= 0")
            if axis in UPPER and any(v > UPPER[axis] for v in grid):
                raise ConfigError(f"search axis {axis}: the grid {list(grid)} must hold values <= {UPPER[axis]:g}")
        if self.bisect < 0 or self.confirm < 1:
            raise ConfigError("search: bisect must be >= 0 and confirm >= 1")

    @property
    def rounds(self) -> int:
        """Screening rounds: a coarse grid and `bisect` refinements per axis."""
        return len(self.axes) * (1 + self.bisect)

    def _screen(self, **setting) -> Point:
        return Point(num=self.num, ranges=self.ranges, **setting)

    def points(self, round_: int, history: dict) -> list[Point]:
        """The new points of screening round `round_` (0-based), given `history` {Point: value}
        of the rounds before it (the screening points among them decide). Points already in the
        history are left out."""
        if not 0 <= round_ < self.rounds:
            raise ConfigError(f"search round {round_} is not in 0..{self.rounds - 1}")
        axis_index, step = divmod(round_, 1 + self.bisect)
        axis, grid = self.axes[axis_index]
        screened = {p: v for p, v in history.items() if (p.num, p.ranges) == (self.num, self.ranges)}
        best = min(screened, key=lambda p: (screened[p], p.setting_key())) if screened else None
        fixed = {"weight": 1.0, "mix": None, "sigma_hi": None, "sigma_lo": None}
        for a, _ in self.axes[:axis_index]:  # the axes searched before: at their best
            fixed[a] = best.value(a) if best is not None else fixed[a]
        if axis == "sigma_hi":
            fixed["sigma_lo"] = 0.0  # the upper end first, with the lower end at zero (Section 4.2)
        if step == 0:
            values = sorted({_round(v) for v in grid})
        else:
            line = sorted(
                {p.value(axis) for p in screened if all(p.value(a) == fixed[a] for a in AXES if a != axis)} - {None}
            )
            centre = min(
                (
                    p
                    for p in screened
                    if p.value(axis) in line and all(p.value(a) == fixed[a] for a in AXES if a != axis)
                ),
                key=lambda p: (screened[p], p.setting_key()),
            ).value(axis)
            values = _midpoints(line, centre)
        if axis in UPPER:
            values = [v for v in values if v <= UPPER[axis]]
        if axis == "sigma_hi":  # an interval (lo, hi] must not be empty
            values = [v for v in values if v > fixed["sigma_lo"]]
        elif axis == "sigma_lo" and fixed["sigma_hi"] is not None:
            values = [v for v in values if v < fixed["sigma_hi"]]
        new = []
        for v in values:
            p = self._screen(**{**fixed, axis: v})
            if p not in history and p not in new:
                new.append(p)
        return new

    def confirm_points(self, history: dict) -> list[Point]:
        """The `confirm` best screened settings at the full image count and seed ranges."""
        screened = {p: v for p, v in history.items() if (p.num, p.ranges) == (self.num, self.ranges)}
        ranked = sorted(screened, key=lambda p: (screened[p], p.setting_key()))[: self.confirm]
        return [dataclasses.replace(p, num=self.full_num, ranges=self.full_ranges) for p in ranked]


def _midpoints(line: list, centre: float) -> list:
    """The midpoints between `centre` and its neighbours on `line`; at an end of the line, half
    a spacing beyond it (not below 0)."""
    i = line.index(centre)
    out = []
    lo = line[i - 1] if i > 0 else (centre - (line[i + 1] - centre) if len(line) > 1 else None)
    hi = line[i + 1] if i + 1 < len(line) else (centre + (centre - line[i - 1]) if len(line) > 1 else None)
    for neighbour in (lo, hi):
        if neighbour is None:
            continue
        v = _round((centre + neighbour) / 2)
        if v >= 0 and v != centre and v not in line:
            out.append(v)
    return out


def parse_grid(value, where: str) -> list[float]:
    """A coarse grid: a number, a list, or text '1.0,1.5,...,3.0' (a '...' continues the step
    before it, as in phema.grid) -> sorted unique values at 3 decimals, each >= 0."""
    try:
        values = parse_number_list(value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"{where}: {value!r} holds a value below 0 or not finite")
    return sorted({_round(v) for v in values})

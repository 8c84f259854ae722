"""Per-tensor EMA lengths (EDM2, arXiv 2312.02696, Sec. 3.3 and Fig. 5b; docs/phema.md#per-tensor).

Post-hoc EMA gives every output tensor its own coefficients for free: the streaming pass
computes the columns of X of every EMA length asked for once per chunk, and each tensor of an
output takes its own column (`edm2.io.combine.write_linear_combinations(select=...)`). A
*variant* names some tensors and the EMA length each of them gets; every other tensor keeps the
output's global length.

Tensors are named by state-dict name, by fnmatch pattern (`unet.enc.*.emb_linear.weight`), or
by the paper's names of Appendix D.6 (`enc-64x64-block0-affine`, `map-label`; `D6_TENSORS` are
the 28 the paper sweeps), which resolve against the network's own names: `affine` is
`affine` (configs A-E) or `emb_linear` (F-G), `conv0`/`conv1`/`skip` are `conv0`/`conv1`/`skip`
or `conv_res0`/`conv_res1`/`conv_skip`, `enc-64x64-conv` is the input conv `enc.64x64_conv`,
`map-label` is `map_label` or `emb_label`, `map-layer0` is `map_layer0` or `emb_noise`; weights
only (the paper sweeps no biases).
"""

import fnmatch
import re
from pathlib import Path

from edm2.errors import ConfigError
from edm2.utils import parse_std_list

# Appendix D.6: the tensors of the paper's per-tensor sweep (Fig. 5b), in its order.
D6_TENSORS = (
    "enc-64x64-block0-affine", "enc-64x64-block0-conv0", "enc-64x64-block0-conv1", "enc-64x64-conv",
    "enc-32x32-block0-conv0", "enc-32x32-block0-skip", "enc-16x16-block0-affine", "enc-16x16-block0-conv0",
    "enc-16x16-block2-conv0", "enc-8x8-block0-affine", "enc-8x8-block0-skip", "enc-8x8-block1-conv0",
    "enc-8x8-block2-conv0", "dec-8x8-block0-conv0", "dec-8x8-block2-skip", "dec-8x8-in0-affine",
    "dec-16x16-block0-affine", "dec-16x16-block0-conv1", "dec-16x16-block0-skip", "dec-32x32-block0-conv1",
    "dec-32x32-block0-skip", "dec-32x32-up-affine", "dec-64x64-block0-conv1", "dec-64x64-block0-skip",
    "dec-64x64-block3-skip", "dec-64x64-up-affine", "map-label", "map-layer0",
)  # fmt: skip

_LAYERS = {
    "affine": ("affine", "emb_linear"),
    "conv0": ("conv0", "conv_res0"),
    "conv1": ("conv1", "conv_res1"),
    "skip": ("skip", "conv_skip"),
}
_MAPPING = {"map-label": ("map_label", "emb_label"), "map-layer0": ("map_layer0", "emb_noise")}
_PAPER_NAME = re.compile(r"^(enc|dec)-(\d+x\d+)-(?:(conv)|(\w+?)-(affine|conv0|conv1|skip))$")


def paper_candidates(name: str) -> list[str] | None:
    """State-dict names a D.6 tensor name may stand for, most specific first; None when `name`
    is not in the paper's form."""
    if name in _MAPPING:
        stems = [stem for stem in _MAPPING[name]]
    else:
        m = _PAPER_NAME.match(name)
        if m is None:
            return None
        part, res, conv, block, layer = m.groups()
        if conv:
            stems = [f"{part}.{res}_conv"]
        else:
            stems = [f"{part}.{res}_{block}.{alias}" for alias in _LAYERS[layer]]
    return [f"{prefix}{stem}.weight" for stem in stems for prefix in ("unet.", "")]


def resolve_tensors(spec: str, names) -> list[str]:
    """The state-dict names (sorted) that `spec` (a D.6 name, an exact name or an fnmatch
    pattern) selects among `names`. Raises ConfigError when it selects nothing."""
    names = list(names)
    candidates = paper_candidates(spec)
    if candidates is not None:
        found = [c for c in candidates if c in names]
        if found:
            return found[:1]
    if spec in names:
        return [spec]
    matched = sorted(fnmatch.filter(names, spec))
    if not matched:
        hint = ", ".join(n for n in names if not n.endswith((".freqs", ".phases")))[:200]
        raise ConfigError(
            f"--tensor-std {spec}: no tensor of the network matches; give a state-dict name or pattern "
            f"(e.g. {hint}...) or a name of the paper's Appendix D.6 such as enc-64x64-block0-affine"
        )
    return matched


def parse_tensor_std(text: str) -> dict[str, float]:
    """'NAME=STD[,NAME=STD...]' -> {NAME: STD} (STD as in --outstd: 0 < std < sqrt(1/12)).
    Raises ConfigError naming the bad item."""
    result = {}
    for item in str(text).split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--tensor-std {text!r}: {item!r} is not NAME=STD, e.g. enc-64x64-block0-affine=0.050")
        (std,) = parse_std_list(value.strip())
        if name.strip() in result:
            raise ConfigError(f"--tensor-std {text!r}: {name.strip()} is given twice")
        result[name.strip()] = std
    return result


def read_tensor_std_yaml(path) -> list[dict[str, float]]:
    """A YAML file of variants: a mapping {NAME: STD} (one variant) or a list of such mappings.
    Raises ConfigError for anything else."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--tensor-std-file {path}: {e}".splitlines()[0]) from None
    variants = data if isinstance(data, list) else [data]
    out = []
    for v in variants:
        if not isinstance(v, dict) or not v:
            raise ConfigError(f"--tensor-std-file {path}: expected a mapping NAME: STD or a list of them")
        out.append(parse_tensor_std(",".join(f"{k}={val}" for k, val in v.items())))
    return out

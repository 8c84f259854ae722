"""Post-hoc EMA reconstruction (EDM2 paper, arXiv 2312.02696, Sec. 3.3 and Appendix C; docs/method.md#ema).

The method in three steps: the input snapshots of one run (`find_inputs`, `select_inputs`),
the coefficients X [n_in, n_out] of the output EMA lengths, solved once per run (Algorithm 3,
`edm2.ema.maths.solve_posthoc_coefficients`), and every output as the weighted sum of the
inputs, `out_j = sum_i X[i, j] * in_i`, over the trained parameters; the buffers, which are not
averaged, come from the last input. The weighted sum is computed in one streaming pass with
bounded memory by `edm2.io.combine.write_linear_combinations`, which reads safetensors
snapshots and official pickles in place. Outputs are our snapshots and load with
`edm2.io.snapshot.load_snapshot`.
"""

import dataclasses
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edm2.ema.certificate import certificates
from edm2.ema.maths import parse_std_list, solve_posthoc_coefficients
from edm2.ema.per_tensor import resolve_tensors
from edm2.errors import ConfigError, FormatError
from edm2.io.atomic import atomic_write_text, made_folder
from edm2.io.combine import TensorFile, write_linear_combinations
from edm2.io.official import OfficialLayouts, load_official_pickle, snapshot_fields
from edm2.io.safetensors_stream import read_safetensors_header
from edm2.io.snapshot import FORMAT, read_snapshot_info, save_snapshot
from edm2.naming import PHEMA_PREFIX, certificate_name, parse_snapshot_name, snapshot_name, tensor_variant_prefix
from edm2.nn import Precond
from edm2.utils import kimg_to_nimg


@dataclasses.dataclass
class PhemaInput:
    """One input snapshot: its file, training image count and relative EMA std."""

    path: Path
    nimg: int
    std: float

    @property
    def is_pickle(self) -> bool:
        return self.path.suffix == ".pkl"


def find_inputs(indir, inprefix: str | None = None, instd=None, exclude_prefix: str | None = None) -> list:
    """Scan `indir` (not recursively) for snapshots named `<prefix>-<kimg>-<std>.(pkl|safetensors)`.

    kimg -> nimg by `kimg_to_nimg` (docs/method.md#ema); for our snapshots the exact nimg of the
    metadata is used (it agrees whenever nimg is a multiple of 1024). Filters: exact prefix
    (`inprefix`), std membership (`instd`, a list or std-list text). Returns [PhemaInput] sorted
    by (nimg, std). Raises ConfigError for a missing folder or two files of one snapshot,
    FormatError for metadata that disagrees with the file name.
    """
    indir = Path(indir)
    if not indir.is_dir():
        raise ConfigError(f"--indir {indir}: no such directory")
    stds = None if instd is None else parse_std_list(instd)
    found = {}
    for path in sorted(indir.iterdir()):
        parsed = parse_snapshot_name(path.name)
        if parsed is None or not path.is_file():
            continue
        prefix = parsed.prefix
        if (inprefix is not None and prefix != inprefix) or (exclude_prefix is not None and prefix == exclude_prefix):
            continue
        kimg, std = parsed.kimg, parsed.std
        if stds is not None and std not in stds:
            continue
        nimg = kimg_to_nimg(kimg)
        if parsed.ext == "safetensors":
            info = read_snapshot_info(path)
            if info.nimg // 1000 != kimg or info.ema_std is None or abs(info.ema_std - std) > 5e-4:
                raise FormatError(
                    f"{path}: metadata (nimg={info.nimg}, ema_std={info.ema_std}) disagrees with the file name; "
                    "rename the file or fix its metadata"
                )
            nimg = info.nimg
            if info.extra.get("ema_kind") == "traditional":  # config A (edm2.train.configs)
                raise ConfigError(
                    f"{path.name} holds a traditional EMA (config A), which post-hoc EMA cannot combine; "
                    "use it as it is, or pick power-function snapshots with --indir/--inprefix"
                )
        key = (nimg, std)
        if key in found:
            raise ConfigError(
                f"{found[key].path.name} and {path.name} are the same snapshot (kimg {kimg}, std {std}); "
                "remove one or pick one with --inprefix"
            )
        found[key] = PhemaInput(path, nimg, std)
    return [found[key] for key in sorted(found)]


def select_inputs(inputs: list, out_nimg: int | None = None) -> tuple[list, int]:
    """The inputs that can contribute at training time `out_nimg` (images; default: the latest
    input): `(used inputs, out_nimg)`, those with 0 < nimg <= out_nimg (a profile ending after
    the output's cannot be part of it, and a step-0 snapshot has a zero profile). Raises
    ConfigError when nothing is left or `out_nimg` is not the time of an input."""
    if not inputs:
        raise ConfigError("no input snapshots found; check --indir, --inprefix and --instd")
    if out_nimg is None:
        out_nimg = max(inp.nimg for inp in inputs)
    elif out_nimg not in {inp.nimg for inp in inputs}:
        kimgs = sorted({inp.nimg // 1000 for inp in inputs})
        raise ConfigError(f"--outkimg {out_nimg // 1000} matches no input snapshot; available kimg: {kimgs}")
    used = [inp for inp in inputs if 0 < inp.nimg <= out_nimg]
    if not used:
        raise ConfigError(f"no input snapshot with 0 < nimg <= {out_nimg}; the step-0 snapshots cannot be used")
    return used, out_nimg


def solve_coefficients(used: list, out_std: list, out_nimg: int) -> np.ndarray:
    """X float64 [len(used), len(out_std)], columns summing to 1: the least-squares weights of the
    inputs' EMA profiles for each output profile ending at `out_nimg` (Algorithm 3). Raises
    ConfigError when the input profiles are linearly dependent."""
    try:
        X = solve_posthoc_coefficients(
            [inp.nimg for inp in used], [inp.std for inp in used], np.full(len(out_std), out_nimg), out_std
        )
    except np.linalg.LinAlgError:
        X = np.full((len(used), len(out_std)), np.nan)
    if not np.all(np.isfinite(X)):
        raise ConfigError("the input EMA profiles are linearly dependent; remove duplicate snapshots")
    return X


def plan_coefficients(inputs: list, out_std: list, out_nimg: int | None = None):
    """`select_inputs`, then `solve_coefficients`: `(used inputs, out_nimg, X)`, without reading
    any weights."""
    used, out_nimg = select_inputs(inputs, out_nimg)
    return used, out_nimg, solve_coefficients(used, out_std, out_nimg)


def _open_input(inp: PhemaInput, scratch: Path, layouts: OfficialLayouts) -> tuple[TensorFile, dict]:
    """An input as the combination reads it, and its snapshot fields {network_kwargs, encoder,
    extra}: a safetensors file, or an official pickle read in place (one written with pickle
    protocol 2 is converted once into `scratch`). `layouts` parses the pickles, once per
    distinct structure (the snapshots of one run share one)."""
    if inp.is_pickle:
        layout = layouts(inp.path)  # read in place, no network built
        if layout is not None:
            return TensorFile(inp.path, layout[0]), layout[1]
        data = load_official_pickle(inp.path, dtype=None)
        encoder, extra = snapshot_fields(data, inp.path)
        path = scratch / (inp.path.stem + ".safetensors")
        save_snapshot(path, data["ema"].state_dict(), data["network_kwargs"], encoder, inp.nimg, inp.std, extra, None)
        del data
    else:
        path = inp.path
    tensors, meta = read_safetensors_header(path)
    if meta.get("format") != FORMAT:
        raise FormatError(f"{inp.path}: not an edm2 snapshot (metadata format={meta.get('format')!r})")
    info = {
        "network_kwargs": json.loads(meta["network_kwargs"]),
        "encoder": json.loads(meta["encoder"]),
        "extra": json.loads(meta.get("extra") or "{}"),
    }
    with open(path, "rb") as f:  # the data follow the 8-byte length and the header
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
    # The recorded digest of the tensor data is verified by the pass, from the bytes it reads.
    return TensorFile(path, tensors, shown=inp.path, sha256=meta.get("sha256"), data_start=data_start), info


def phema_record(used, cert_common, cert_output, out_nimg, acc_dtype) -> dict:
    """What a reconstruction records about itself (`extra.phema` of its metadata, and its
    certificate JSON): the inputs, the coefficients of this output, and the certificate
    (edm2.ema.certificate: profile error, whether weak, the supported band, the input range)."""
    record = {
        "ema_std": cert_output["ema_std"],
        "inputs": [{"file": inp.path.name, "nimg": inp.nimg, "std": inp.std} for inp in used],
        "coefficients": cert_output["coefficients"],
        "out_nimg": out_nimg,
        "accumulate_dtype": str(acc_dtype).removeprefix("torch."),
    }
    record["profile_error"] = cert_output["profile_error"]
    record["weak"] = cert_output["weak"]
    record.update(cert_common)
    return record


def _output_metadata(info, record, std, out_nimg) -> dict:
    """Snapshot metadata of one output: the first input's, plus in `extra.phema` its record
    (`phema_record`)."""
    extra = dict(info["extra"])
    extra.pop("phema", None)
    extra["phema"] = record
    return {
        "format": FORMAT,
        "network_kwargs": json.dumps(info["network_kwargs"]),
        "encoder": json.dumps(info["encoder"]),
        "nimg": str(int(out_nimg)),
        "ema_std": repr(round(float(std), 9)),
        "extra": json.dumps(extra),
    }


def _out_nimgs(inputs: list, outkimg) -> list:
    """The training times (images) of `outkimg` (None: the latest input; an int or a list of
    them), each the input time with that kimg (= kimg_to_nimg(kimg) for official files)."""
    if outkimg is None:
        return [None]
    kimgs = [outkimg] if isinstance(outkimg, int) else list(outkimg)
    nimgs = []
    for kimg in kimgs:
        times = {inp.nimg for inp in inputs if inp.nimg // 1000 == int(kimg)}
        nimgs.append(times.pop() if len(times) == 1 else kimg_to_nimg(int(kimg)))
    return nimgs


def _resolve_variant(variant: dict, names: list) -> dict:
    """{spec: std} -> ({state-dict name: std}, {spec: [names]}); ConfigError when two specs give
    one tensor two lengths."""
    by_name, specs = {}, {}
    for spec, std in variant.items():
        specs[spec] = resolve_tensors(spec, names)
        for name in specs[spec]:
            if by_name.get(name, std) != std:
                raise ConfigError(f"--tensor-std: {name} is selected twice with different EMA lengths ({spec})")
            by_name[name] = std
    return by_name, specs


def reconstruct_phema(
    indir,
    outdir,
    outstd,
    inprefix: str | None = None,  # Only inputs with exactly this file-name prefix.
    instd=None,  # Only inputs with these stds (list or std-list text).
    outprefix: str = PHEMA_PREFIX,  # Output file-name prefix.
    outkimg=None,  # Reconstruct at this training kimg, or at each of a list (default: the latest input).
    skip: bool = False,  # Skip outputs that already exist.
    max_memory="2GiB",  # Peak memory budget of the process (bytes or text like '2GiB').
    dtype: torch.dtype = torch.float32,  # Accumulation dtype (float32 or float64).
    chunk_elements: int | None = None,  # Elements per chunk (default: chosen from max_memory).
    workers: int | None = None,  # Compute threads (default: torch.get_num_threads()).
    scratch_dir=None,  # Where official pickles are converted (default: a temporary folder in outdir).
    progress: bool = False,  # Show a tqdm progress bar.
    tensor_std: list | None = None,  # Per-tensor variants [{tensor spec: std}] (edm2.ema.per_tensor).
) -> dict:
    """Reconstruct networks with the given EMA lengths from the snapshots in `indir`.

    The post-hoc EMA of the EDM2 paper (arXiv 2312.02696, Sec. 3.3 and Appendix C; see
    docs/method.md): every output is `out_j = sum_i X[i, j] in_i` with the least-squares
    coefficients of Algorithm 3 (`solve_coefficients`, solved once per training time), computed
    in one streaming pass. Writes `{outprefix}-{kimg:07d}-{std:.3f}.safetensors` into `outdir`
    for every std of `outstd` and kimg of `outkimg` (our snapshot format: fp16 weights, metadata
    of the first input, and in `extra.phema` the inputs, the coefficients used and the
    certificate of `edm2.ema.certificate`; buffers come from the last input) and beside each
    its certificate `<name>.certificate.json` (the same record).

    `tensor_std`: instead of the global outputs, one output per variant, std and kimg, named
    `{outprefix}-{tag}-{kimg:07d}-{std:.3f}.safetensors` (`edm2.naming.tensor_variant_prefix`),
    whose tensors named in the variant (`edm2.ema.per_tensor.resolve_tensors`) have their own
    EMA length and the rest `std` (paper Sec. 3.3, Fig. 5b); its record adds 'tensor_std'. All
    variants and training times share the one pass (each input read once).

    Returns a summary dict with 'outputs' (paths written), 'inputs' (used by any output),
    'out_nimg' (the latest output time), 'coefficients' (X [inputs, columns]), 'records' (the
    record of each output) and figures of the pass. Raises ConfigError for bad options or
    inputs that cannot give the outputs, FormatError for unreadable inputs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError("edm2 phema runs in a single process; do not start it under torchrun (WORLD_SIZE != 1)")
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"accumulation dtype {dtype} is not supported; use float32 or float64")
    t_start = time.perf_counter()
    out_std = parse_std_list(outstd)
    variants = [{}] if not tensor_std else [dict(v) for v in tensor_std]
    outdir = Path(outdir)
    same_dir = outdir.exists() and Path(indir).resolve() == outdir.resolve()
    inputs = find_inputs(indir, inprefix, instd, exclude_prefix=outprefix if same_dir else None)
    times = []  # [(used inputs, out_nimg)] per training time
    for out_nimg in _out_nimgs(inputs, outkimg):
        times.append(select_inputs(inputs, out_nimg))
    if len({t for _, t in times}) != len(times):
        raise ConfigError(f"--outkimg {outkimg}: a training time is given twice")
    used = select_inputs(inputs, max(t for _, t in times))[0]  # the inputs of every output

    def out_path(out_nimg, variant, std):
        prefix = outprefix if not variant else tensor_variant_prefix(outprefix, variant)
        return outdir / snapshot_name(prefix, out_nimg // 1000, std)

    outputs = [(k, v, std) for k in range(len(times)) for v in range(len(variants)) for std in out_std]
    if skip:
        outputs = [(k, v, std) for k, v, std in outputs if not out_path(times[k][1], variants[v], std).exists()]
    result = {"outputs": [], "inputs": used, "out_nimg": max(t for _, t in times), "coefficients": None}
    result.update(bytes_read=0, records=[])
    if not outputs:
        return result
    paths = [out_path(times[k][1], variants[v], std) for k, v, std in outputs]
    if len({p.name for p in paths}) != len(paths):
        raise ConfigError("two outputs give the same file name (std:.3f); use stds at least 0.001 apart")
    # The columns of X: every EMA length needed at each time, sorted (the global case: out_std).
    columns, column_of, certs = [], {}, {}
    row_of = {id(inp): i for i, inp in enumerate(used)}
    blocks = []
    for k, (used_k, out_nimg) in enumerate(times):
        stds = sorted(
            {std for kk, _, std in outputs if kk == k}
            | {s for kk, v, _ in outputs if kk == k for s in variants[v].values()}
        )
        if not stds:
            continue
        X_k = solve_coefficients(used_k, stds, out_nimg)  # the only solve at this time
        common, per_std = certificates(used_k, X_k, stds, out_nimg)
        block = np.zeros((len(used), len(stds)))
        block[[row_of[id(inp)] for inp in used_k]] = X_k
        blocks.append(block)
        for std, cert in zip(stds, per_std):
            column_of[(k, std)] = len(columns)
            columns.append((k, std))
            certs[(k, std)] = (common, cert)
    X = result["coefficients"] = np.concatenate(blocks, axis=1)
    records = []
    for k, v, std in outputs:
        used_k, out_nimg = times[k]
        common, cert = certs[(k, std)]
        record = phema_record(used_k, common, cert, out_nimg, dtype)
        if variants[v]:
            record["tensor_std"] = [
                {
                    "spec": spec,
                    "std": float(s),
                    **{key: certs[(k, s)][1][key] for key in ("profile_error", "weak", "coefficients")},
                }
                for spec, s in variants[v].items()
            ]
            record["weak"] = record["weak"] or any(t["weak"] for t in record["tensor_std"])
        records.append(record)
    with made_folder(outdir):  # removed again if the inputs turn out unusable
        with tempfile.TemporaryDirectory(prefix=".phema-scratch-", dir=scratch_dir or outdir) as scratch:
            layouts = OfficialLayouts(check=False)  # inputs are compared with each other instead
            files, infos = zip(*(_open_input(inp, Path(scratch), layouts) for inp in used))  # pickles converted first
            for inp, info in zip(used, infos):
                if info["network_kwargs"] != infos[0]["network_kwargs"]:
                    raise FormatError(
                        f"{inp.path.name} has a different network config than {used[0].path.name}; "
                        "pick the snapshots of one run (--indir/--inprefix)"
                    )
            select = None
            if any(variants[v] for _, v, _ in outputs):
                names = [n for n in files[0].tensors if not Precond.is_buffer(n)]
                resolved = [_resolve_variant(variant, names) for variant in variants]
                for record, (_, v, _) in zip(records, outputs):
                    for entry in record.get("tensor_std", []):
                        entry["tensors"] = resolved[v][1][entry["spec"]]

                def select(name):
                    return [column_of[(k, resolved[v][0].get(name, std))] for k, v, std in outputs]

            metadatas = [_output_metadata(infos[0], r, std, times[k][1]) for r, (k, _, std) in zip(records, outputs)]
            pass_figures = write_linear_combinations(
                list(files),
                X,
                paths,
                metadatas,
                copied=Precond.is_buffer,  # buffers are copied from the last input, never averaged
                acc_dtype=dtype,
                max_memory=max_memory,
                chunk_elements=chunk_elements,
                workers=workers,
                progress=f"phema {X.shape[0]} in -> {len(paths)} out" if progress else None,
                select=select,
            )
    result.update(pass_figures)
    for path, record in zip(result["outputs"], records):
        cert = {"network": Path(path).name, **record}
        atomic_write_text(Path(path).parent / certificate_name(Path(path).name), json.dumps(cert, indent=1) + "\n")
    result["records"] = records
    result["out_std"] = sorted({std for _, _, std in outputs})
    result["wall_s"] = time.perf_counter() - t_start
    return result

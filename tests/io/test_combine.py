"""Streaming linear combinations of tensor files (edm2.io.combine): any tensors, any coefficients."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edm2.errors import ConfigError, FormatError
from edm2.io.combine import TensorFile, parse_bytes, write_linear_combinations
from edm2.io.safetensors_stream import read_safetensors_header
from edm2.io.snapshot import verify_safetensors


def tensor_files(folder, n, dtypes, seed=0):
    """n safetensors files of the same three tensors (not a network): [(TensorFile, {name: tensor})]."""
    g = torch.Generator().manual_seed(seed)
    files = []
    for i in range(n):
        dtype = dtypes[i % len(dtypes)]
        state = {
            "a": torch.randn(3, 5, generator=g).to(dtype),
            "b.weight": torch.randn(7, generator=g).to(dtype),
            "c.scale": torch.randn(2, 2, generator=g).to(dtype),
        }
        path = folder / f"in-{i}.safetensors"
        save_file(state, str(path), metadata={"anything": "goes"})
        files.append((TensorFile(path, read_safetensors_header(path)[0]), state))
    return files


def test_outputs_are_the_weighted_sums_and_the_copied_tensors_come_from_the_last_input(tmp_path):
    inputs = tensor_files(tmp_path, 4, [torch.float16, torch.float32, torch.bfloat16])
    X = np.array([[0.5, -1.0], [0.25, 2.0], [2.0, 0.0], [-0.75, 0.125]])
    paths = [tmp_path / "out-0.safetensors", tmp_path / "out-1.safetensors"]
    result = write_linear_combinations(
        [f for f, _ in inputs],
        X,
        paths,
        [{"j": "0"}, {"j": "1"}],
        copied=lambda name: name.endswith(".scale"),
        acc_dtype=torch.float64,
        chunk_elements=4,
    )
    assert result["outputs"] == paths
    for j, path in enumerate(paths):
        out = load_file(str(path))
        meta = read_safetensors_header(path)[1]
        assert meta.pop("j") == str(j) and set(meta) == {"sha256", "header_sha256"}  # sealed as our snapshots
        verify_safetensors(path)
        assert set(out) == {"a", "b.weight", "c.scale"} and all(v.dtype == torch.float16 for v in out.values())
        assert torch.equal(out["c.scale"], inputs[-1][1]["c.scale"].to(torch.float16))
        for name in ("a", "b.weight"):
            naive = sum(X[i, j] * state[name].double() for i, (_, state) in enumerate(inputs))
            assert torch.equal(out[name], naive.to(torch.float16)), name
    in_bytes = sum(v.numel() * v.element_size() for _, s in inputs for k, v in s.items() if k != "c.scale")
    assert result["bytes_read"] == in_bytes + inputs[-1][1]["c.scale"].nbytes


def test_inputs_of_other_tensors_are_refused_and_leave_nothing(tmp_path):
    inputs = [f for f, _ in tensor_files(tmp_path, 2, [torch.float16])]
    save_file({"a": torch.zeros(3, 5)}, str(tmp_path / "other.safetensors"))
    other = TensorFile(tmp_path / "other.safetensors", read_safetensors_header(tmp_path / "other.safetensors")[0])
    out = tmp_path / "out.safetensors"
    with pytest.raises(FormatError, match="its tensors differ"):
        write_linear_combinations([*inputs, other], np.ones((3, 1)) / 3, [out], [{}])
    with pytest.raises(ConfigError, match="too small"):
        write_linear_combinations(inputs, np.ones((2, 1)) / 2, [out], [{}], max_memory="1MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-0.safetensors", "in-1.safetensors", "other.safetensors"]


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 << 30
    assert parse_bytes("512MB") == 512_000_000
    assert parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes(1234) == 1234
    with pytest.raises(ConfigError, match="not a memory size"):
        parse_bytes("lots")


def sealed(folder, name, state, entries):
    """`state` written by the streaming writer in the tensor order `entries`, sealed with its digests:
    a TensorFile with the recorded SHA-256 and data start, as edm2.ema.phema opens one."""
    import struct

    from edm2.io.safetensors_stream import StreamingWriter

    path = folder / name
    with StreamingWriter([path], [(k, state[k].dtype, state[k].shape) for k in entries], [{}]) as out:
        offset = 0
        for k in entries:
            data = memoryview(state[k].contiguous().view(torch.uint8).numpy())
            out.write(0, data, offset)
            offset += len(data)
        out.commit()
    tensors, meta = read_safetensors_header(path)
    start = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    return TensorFile(path, tensors, sha256=meta["sha256"], data_start=start)


@pytest.mark.parametrize("damaged", [None, 0, 1], ids=["intact", "first-in-order", "other-layout"])
def test_recorded_digests_are_verified_whatever_the_layout_of_an_input(tmp_path, damaged):
    """The second input stores its tensors in another order than the first, so the pass reads it
    out of file order: its digest is then computed in full; a flipped byte in either is refused."""
    g = torch.Generator().manual_seed(1)
    states = [
        {k: torch.randn(s, generator=g).half() for k, s in (("a", (64,)), ("b", (33,)), ("c", (8,)))} for _ in "xy"
    ]
    files = [sealed(tmp_path, "x.safetensors", states[0], "abc"), sealed(tmp_path, "y.safetensors", states[1], "cba")]
    if damaged is not None:
        loc = files[damaged].tensors["b"]
        with open(files[damaged].path, "r+b") as f:
            f.seek(loc.start + 5)
            f.write(b"\x55\xaa")
    X = np.array([[0.25], [0.75]])
    out = tmp_path / "out.safetensors"
    if damaged is None:
        write_linear_combinations(files, X, [out], [{}], chunk_elements=16)
        verify_safetensors(out)
        expected = 0.25 * states[0]["b"].double() + 0.75 * states[1]["b"].double()
        torch.testing.assert_close(load_file(str(out))["b"].double(), expected, atol=1e-3, rtol=1e-3)
    else:
        with pytest.raises(FormatError, match=f"{files[damaged].path}: contents damaged"):
            write_linear_combinations(files, X, [out], [{}], chunk_elements=16)
        assert not out.exists()

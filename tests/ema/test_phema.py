"""Post-hoc EMA reconstruction in one streaming pass (edm2.ema.phema, docs/method.md#ema)."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.ema import power_function_response, solve_posthoc_coefficients
from edm2.ema.phema import find_inputs, reconstruct_phema
from edm2.errors import ConfigError, FormatError
from edm2.io.snapshot import build_network, load_snapshot, save_snapshot

TINY = tiny_network(channels_per_head=8)
ENCODER = {"class": "StandardRGBEncoder"}
BUFFERS = ("unet.emb_fourier.freqs", "unet.emb_fourier.phases", "logvar_fourier.freqs", "logvar_fourier.phases")


def write_snapshots(folder, kimgs, stds, kw=TINY, seed=0, fill=None, prefix="network-snapshot", dtype=torch.float16):
    """Random snapshots (or `fill(nimg, std, template) -> state dict`); returns {(nimg, std): fp16 state}."""
    template = build_network(kw, device="cpu").state_dict()
    g = torch.Generator().manual_seed(seed)
    states = {}
    for kimg in kimgs:
        nimg = (kimg * 1000 + 999) // 1024 * 1024
        for std in stds:
            if fill is None:
                state = {k: torch.randn(v.shape, generator=g) for k, v in template.items()}
            else:
                state = fill(nimg, std, template)
            path = folder / f"{prefix}-{kimg:07d}-{std:.3f}.safetensors"
            extra = {"dataset_kwargs": {"path": "demo.zip"}, "first": kimg == kimgs[0]}
            save_snapshot(path, state, kw, ENCODER, nimg, std, extra, dtype=dtype)
            states[(nimg, std)] = {k: v.to(dtype) for k, v in state.items()}
    return states


def assert_naive_sum(result, states, atol_scale=1e-6):
    """Every output equals sum_i X[i, j] * w_i (computed in float64) within fp16 rounding."""
    X, used = result["coefficients"], result["inputs"]
    assert X.shape == (len(used), len(result["outputs"]))
    for j, path in enumerate(result["outputs"]):
        net, info = load_snapshot(path, dtype=None)
        for name, value in net.state_dict().items():
            assert value.dtype == torch.float16
            if name in BUFFERS:  # buffers come from the last input (docs/method.md#ema)
                assert torch.equal(value, states[(used[-1].nimg, used[-1].std)][name]), name
                continue
            terms = [X[i, j] * states[(u.nimg, u.std)][name].double() for i, u in enumerate(used)]
            naive = sum(terms)
            scale = sum(t.abs() for t in terms)
            tol = naive.abs() * 2.0**-11 + scale * atol_scale + 2.0**-24
            assert ((value.double() - naive).abs() <= tol).all(), name


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    states = write_snapshots(folder, [0, 4, 8, 12, 16, 20], [0.050, 0.100])
    return folder, states


def test_outputs_equal_naive_sum_over_chunk_boundaries(run_dir, tmp_path):
    folder, states = run_dir
    result = reconstruct_phema(folder, tmp_path, "0.040,0.060,...,0.200", chunk_elements=777)
    assert [p.name for p in result["outputs"]][:2] == [
        "phema-0000020-0.040.safetensors",
        "phema-0000020-0.060.safetensors",
    ]
    assert len(result["outputs"]) == 9
    assert_naive_sum(result, states)
    # Each input byte is read once, whatever the number of outputs: the parameters of every
    # used input plus the buffers of the last one.
    net = build_network(TINY)
    param_bytes = sum(p.numel() for p in net.parameters()) * 2
    buffer_bytes = sum(b.numel() for b in net.buffers()) * 2
    assert result["bytes_read"] == len(result["inputs"]) * param_bytes + buffer_bytes


def test_default_chunking_and_float64(run_dir, tmp_path):
    folder, states = run_dir
    result = reconstruct_phema(folder, tmp_path / "a", [0.07, 0.13])
    assert_naive_sum(result, states)
    result64 = reconstruct_phema(folder, tmp_path / "b", [0.07, 0.13], dtype=torch.float64, chunk_elements=1000)
    assert_naive_sum(result64, states, atol_scale=1e-14)


def test_coefficients_and_metadata(run_dir, tmp_path):
    folder, _ = run_dir
    result = reconstruct_phema(folder, tmp_path, "0.050,0.123")
    used = result["inputs"]
    # Step-0 snapshots are excluded; inputs sorted by (nimg, std).
    assert [(u.nimg, u.std) for u in used] == [(n, s) for n in (4096, 8192, 12288, 16384, 20480) for s in (0.05, 0.1)]
    expected = solve_posthoc_coefficients([u.nimg for u in used], [u.std for u in used], [20480, 20480], [0.05, 0.123])
    np.testing.assert_allclose(result["coefficients"], expected, rtol=0, atol=0)
    np.testing.assert_allclose(expected.sum(axis=0), 1, atol=1e-12)
    # Asking for an input's own profile gives that input exactly.
    np.testing.assert_allclose(expected[:, 0], np.eye(len(used))[8], atol=1e-6)

    _, info = load_snapshot(result["outputs"][1])
    assert info.nimg == 20480 and info.kimg == 20 and info.ema_std == 0.123
    assert info.network_kwargs == TINY
    assert info.encoder == ENCODER
    assert info.extra["dataset_kwargs"] == {"path": "demo.zip"}
    assert info.extra["first"] is False  # metadata of the first *used* input (step 0 excluded)
    phema = info.extra["phema"]
    assert [i["file"] for i in phema["inputs"]] == [u.path.name for u in used]
    assert phema["coefficients"] == [float(c) for c in expected[:, 1]]
    assert phema["out_nimg"] == 20480


def test_outkimg_uses_only_earlier_inputs(run_dir, tmp_path):
    folder, states = run_dir
    result = reconstruct_phema(folder, tmp_path, "0.090", outkimg=12)
    assert result["outputs"][0].name == "phema-0000012-0.090.safetensors"
    assert max(u.nimg for u in result["inputs"]) == 12288 and len(result["inputs"]) == 6
    assert_naive_sum(result, states)
    assert reconstruct_phema(folder, tmp_path, "0.090", outkimg=12, skip=True)["outputs"] == []
    with pytest.raises(ConfigError, match="--outkimg 13 matches no input"):
        reconstruct_phema(folder, tmp_path, "0.090", outkimg=13)


def test_skip_existing_outputs(run_dir, tmp_path):
    folder, _ = run_dir
    first = reconstruct_phema(folder, tmp_path, "0.070")
    stamp = first["outputs"][0].stat().st_mtime_ns
    second = reconstruct_phema(folder, tmp_path, "0.070,0.080", skip=True)
    assert [p.name for p in second["outputs"]] == ["phema-0000020-0.080.safetensors"]
    assert first["outputs"][0].stat().st_mtime_ns == stamp
    umask = os.umask(0o022)
    os.umask(umask)
    assert first["outputs"][0].stat().st_mode & 0o777 == 0o666 & ~umask
    assert reconstruct_phema(folder, tmp_path, "0.070,0.080", skip=True)["outputs"] == []


def test_input_filters(run_dir, tmp_path):
    folder, _ = run_dir
    assert {u.std for u in find_inputs(folder, instd="0.100")} == {0.1}
    assert find_inputs(folder, inprefix="other") == []
    with pytest.raises(ConfigError, match="no input snapshots"):
        reconstruct_phema(folder, tmp_path, "0.05", inprefix="other")


@pytest.mark.parametrize(
    "text,message",
    [
        ("0.3", "outside the valid range"),
        ("0,0.1", "outside the valid range"),
        ("0.010,...,0.2", "two numbers before it"),
        ("0.010,0.020,...,0.025", "not reachable"),
        ("0.05,abc", "not a number"),
    ],
)
def test_bad_std_lists_are_config_errors(run_dir, tmp_path, text, message):
    folder, _ = run_dir
    with pytest.raises(ConfigError, match=message):
        reconstruct_phema(folder, tmp_path, text)
    assert not any(tmp_path.iterdir())


def test_reconstruction_follows_the_target_profile(tmp_path):
    """Inputs whose weights are their own EMA impulse responses: the outputs must be the
    impulse response of the requested power-function EMA (docs/method.md#ema)."""
    unit = 8  # images per time step of the discretised responses
    length = 32 * 1024 // unit + 1

    def fill(nimg, std, template):
        params = {k: v for k, v in template.items() if k not in BUFFERS}
        flat = np.zeros(sum(v.numel() for v in params.values()))
        flat[:length] = power_function_response(nimg // unit, std, length) * 1000
        state, pos = dict(template), 0
        for k, v in params.items():
            state[k] = torch.from_numpy(flat[pos : pos + v.numel()]).float().reshape(v.shape)
            pos += v.numel()
        return state

    (tmp_path / "in").mkdir()
    write_snapshots(tmp_path / "in", [k * 1024 // 1000 for k in range(1, 33)], [0.05, 0.10], fill=fill)
    result = reconstruct_phema(tmp_path / "in", tmp_path / "out", "0.080,0.150")
    assert result["out_nimg"] == 32768
    for path, std in zip(result["outputs"], (0.08, 0.15)):
        net, _ = load_snapshot(path, dtype=torch.float64)
        flat = torch.cat([v.flatten() for k, v in net.state_dict().items() if k not in BUFFERS]).numpy()
        target = power_function_response(32768 // unit, std, length) * 1000
        assert np.abs(flat[length:]).max() == 0
        err = np.linalg.norm(flat[:length] - target) / np.linalg.norm(target)
        assert err < 0.01, (std, err)


def test_official_options_from_the_command_line(run_dir, tmp_path):
    from edm2.cli import main

    folder, states = run_dir
    out = tmp_path / "out"
    args = ["phema", "--indir", str(folder), "--outdir", str(out), "--outstd", "0.050,0.060,...,0.080"]
    result = CliRunner().invoke(main, args + ["--outkimg", "16", "--max-memory", "1GiB"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        f"phema-0000016-{s}.{ext}"
        for s in ("0.050", "0.060", "0.070", "0.080")
        for ext in ("certificate.json", "safetensors")
    ]
    result = CliRunner().invoke(main, args + ["--outkimg", "16", "--skip"])
    assert result.exit_code == 0 and "Nothing to do" in result.output
    result = CliRunner().invoke(main, ["phema", "--indir", str(folder), "--outdir", str(out), "--outstd", "0.2887"])
    assert result.exit_code == 1 and "0 < std < 0.288675 = sqrt(1/12)" in result.output
    result = CliRunner().invoke(main, args + ["--max-memory", "10MB"])
    assert result.exit_code == 1 and "--max-memory 10MB is too small" in result.output


def test_failures_leave_no_partial_outputs(tmp_path, monkeypatch):
    import edm2.io.combine as combine_module

    folder = tmp_path / "in"
    folder.mkdir()
    write_snapshots(folder, [4, 8], [0.05, 0.10])
    out = tmp_path / "out"
    # An input that disappears or breaks in the middle of the pass (after the scan).
    calls = []

    def failing_read(fd, view, offset):
        calls.append(1)
        if len(calls) == 7:
            raise FormatError("unexpected end of file while reading an input snapshot")
        return real_read(fd, view, offset)

    real_read = combine_module.preadv_full
    monkeypatch.setattr(combine_module, "preadv_full", failing_read)
    with pytest.raises(FormatError, match="unexpected end of file"):
        reconstruct_phema(folder, out, "0.06,0.07,0.08", chunk_elements=500)
    assert not out.exists()  # no outputs, no temporary files, no scratch folder, no folder it made
    out.mkdir()  # a folder that was there before is left
    with pytest.raises(FormatError, match="unexpected end of file"):
        calls.clear()
        reconstruct_phema(folder, out, "0.06,0.07,0.08", chunk_elements=500)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    # A file cut short before the run is refused up front.
    victim = folder / "network-snapshot-0000008-0.100.safetensors"
    os.truncate(victim, victim.stat().st_size - 100)
    with pytest.raises(FormatError, match="not a readable safetensors file|truncated or corrupt"):
        reconstruct_phema(folder, out, "0.07")
    assert list(out.iterdir()) == []


def test_inconsistent_inputs_are_refused(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_snapshots(folder, [4], [0.05, 0.10])
    write_snapshots(folder, [8], [0.05], kw=dict(TINY, model_channels=16))
    with pytest.raises(FormatError, match="different network config"):
        reconstruct_phema(folder, tmp_path / "out" / "phema", "0.07")
    assert not (tmp_path / "out").exists()  # the folders it made are removed again
    save_snapshot(
        folder / "copy-0000004-0.050.safetensors", build_network(TINY, "cpu").state_dict(), TINY, ENCODER, 4096, 0.05
    )
    with pytest.raises(ConfigError, match="same snapshot"):
        find_inputs(folder)


def test_fp32_and_mixed_dtype_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    states = write_snapshots(folder, [4, 8], [0.05, 0.10], dtype=torch.float32)
    states.update(write_snapshots(folder, [12], [0.05, 0.10], seed=1))
    result = reconstruct_phema(folder, tmp_path / "out", "0.06,0.09", chunk_elements=1001)
    assert_naive_sum(result, states)


def test_buffer_names_match_the_network():
    from edm2.nn import Precond

    is_buffer = Precond.is_buffer
    for kw in (TINY, dict(TINY, label_dim=0, num_blocks=2)):
        net = build_network(kw, device="cpu")
        params = {name for name, _ in net.named_parameters()}
        buffers = {name for name, _ in net.named_buffers()}
        assert {n for n in net.state_dict() if is_buffer(n)} == buffers
        assert not any(is_buffer(n) for n in params)


def test_certificate_in_metadata_and_json_beside_and_warning(run_dir, tmp_path):
    import json

    from edm2.ema.certificate import profile_errors
    from edm2.io.snapshot import read_snapshot_info

    folder, _ = run_dir
    out = tmp_path / "out"
    args = ["phema", "--indir", str(folder), "--outdir", str(out), "--outstd", "0.100,0.280"]
    result = CliRunner().invoke(main_cli(), args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "EMA length 0.280 " in warnings[0], result.output
    for std in (0.100, 0.280):
        info = read_snapshot_info(out / f"phema-0000020-{std:.3f}.safetensors")
        cert = json.loads((out / f"phema-0000020-{std:.3f}.certificate.json").read_text())
        assert cert == {"network": f"phema-0000020-{std:.3f}.safetensors", "ema_std": std, **info.extra["phema"]}
        used = cert["inputs"]
        assert cert["input_nimg"] == [used[0]["nimg"], used[-1]["nimg"]] and cert["num_inputs"] == 10
        want = profile_errors(
            [u["nimg"] for u in used], [u["std"] for u in used], np.array([cert["coefficients"]]).T, 20480, [std]
        )[0]
        assert cert["profile_error"] == pytest.approx(want, rel=1e-9, abs=1e-12) and cert["weak"] == (std == 0.280)
    # The report reads the certificate beside a scored network; analyze plots the two profiles.
    from edm2.report.results import read_score

    score = tmp_path / "scores" / "run" / "noguid" / "ema-0.280.json"
    score.parent.mkdir(parents=True)
    net = out / "phema-0000020-0.280.safetensors"
    score.write_text(json.dumps({"metrics": {"fid": {"values": [5.0]}}, "ema_std": 0.28, "network": str(net)}))
    (row,) = read_score(score)
    assert row["profile_error"] == cert["profile_error"] and row["phema_weak"] == 1
    result = CliRunner().invoke(main_cli(), ["analyze", "phema-profile", str(net), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0 and f"profile error {cert['profile_error']:.3%}" in result.output, result.output
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "p.svg").exists()
    result = CliRunner().invoke(main_cli(), ["analyze", "phema-profile", str(score), "--out", str(tmp_path / "q")])
    assert result.exit_code == 1 and "no post-hoc EMA record" in result.output


def main_cli():
    from edm2.cli import main

    return main

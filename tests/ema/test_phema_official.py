"""`edm2 phema` on official EDM2 pickles (read through the safe loader of edm2.io.official)."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edm2.ema.phema import reconstruct_phema
from edm2.errors import FormatError
from edm2.io.official import convert_official_pickle
from edm2.io.snapshot import load_snapshot

_path = Path(__file__).parents[1] / "io" / "official_pickles.py"
_spec = importlib.util.spec_from_file_location("official_pickles", _path)
official_pickles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_pickles)

KIMGS = (0, 4, 8, 12)
STDS = (0.050, 0.100)


@pytest.fixture(scope="module")
def official_run(tmp_path_factory):
    """Official-format snapshots `network-snapshot-<kimg>-<std>.pkl` of one run."""
    root = tmp_path_factory.mktemp("official-run")
    run = root / "run"
    run.mkdir()
    specs = []
    for k, kimg in enumerate(KIMGS):
        for s, std in enumerate(STDS):
            path = run / f"network-snapshot-{kimg:07d}-{std:.3f}.pkl"
            kwargs = dict(official_pickles.TINY_NETWORK, img_channels=4)  # the VAE gives the network 4 channels
            specs.append(dict(path=path, network_kwargs=kwargs, seed=10 * k + s, encoder="vae"))
    official_pickles.make_official_pickles(root, specs)
    refs = {}
    for spec in specs:
        ref = Path(str(spec["path"]) + ".ref.safetensors")
        refs[spec["path"].name] = load_file(str(ref))
        shutil.move(ref, root / ref.name)  # keep the run folder to the pickles only
    return run, refs


def test_phema_reads_official_pickles(official_run, tmp_path):
    run, refs = official_run
    result = reconstruct_phema(run, tmp_path / "out", "0.060,0.090", chunk_elements=999)
    used = result["inputs"]
    assert [u.path.name for u in used] == [f"network-snapshot-{k:07d}-{s:.3f}.pkl" for k in KIMGS[1:] for s in STDS]
    assert result["out_nimg"] == 12288
    X = result["coefficients"]
    for j, path in enumerate(result["outputs"]):
        net, info = load_snapshot(path, dtype=None)
        assert info.encoder["class"] == "StabilityVAEEncoder"
        assert info.extra["loss_kwargs"] == {"P_mean": -0.8, "P_std": 1.6, "sigma_data": 0.5}
        assert info.extra["phema"]["inputs"][0]["file"] == used[0].path.name
        for name, value in net.state_dict().items():
            if name.endswith((".freqs", ".phases")):
                assert torch.equal(value, refs[used[-1].path.name][name])
                continue
            terms = [X[i, j] * refs[u.path.name][name].double() for i, u in enumerate(used)]
            naive, scale = sum(terms), sum(t.abs() for t in terms)
            assert ((value.double() - naive).abs() <= naive.abs() * 2.0**-11 + scale * 1e-6 + 2.0**-24).all()
    assert not [m for m in ("torch_utils", "dnnlib", "training") if m in sys.modules]
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # scratch removed


def test_pickles_and_converted_snapshots_give_identical_outputs(official_run, tmp_path):
    run, _ = official_run
    converted = tmp_path / "converted"
    for path in sorted(run.glob("*.pkl")):
        convert_official_pickle(path, converted / path.with_suffix(".safetensors").name)
    a = reconstruct_phema(run, tmp_path / "a", "0.070", chunk_elements=4096)
    b = reconstruct_phema(converted, tmp_path / "b", "0.070", chunk_elements=4096)
    assert (a["coefficients"] == b["coefficients"]).all()
    sa, sb = load_file(str(a["outputs"][0])), load_file(str(b["outputs"][0]))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_malicious_pickle_among_inputs_is_refused(official_run, tmp_path):
    run, _ = official_run
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (folder / "network-snapshot-0000016-0.050.pkl").write_bytes(evil)
    with pytest.raises(FormatError, match="refusing to load global 'os.system'"):
        reconstruct_phema(folder, tmp_path / "out", "0.070")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_official_pickles_are_read_in_place_without_building_networks(official_run, tmp_path, monkeypatch):
    import edm2.io.official as official

    def refuse(*args, **kwargs):
        raise AssertionError("the network of an input pickle was built")

    monkeypatch.setattr(official, "load_official_pickle", refuse)
    monkeypatch.setattr(official, "network_from_object", refuse)
    run, _ = official_run
    result = reconstruct_phema(run, tmp_path / "out", "0.070")
    assert len(result["outputs"]) == 1 and result["bytes_read"] > 0

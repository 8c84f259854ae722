"""`edm2 metrics train-detector`: the small CNN learns an easy labelled dataset, records its
held-out accuracy in the file, and is deterministic for a seed."""

import pytest
import torch
from click.testing import CliRunner
from metrics_helpers import class_images, write_image_folder

from edm2.cli import main
from edm2.errors import DataError
from edm2.metrics.cnn import load_detector, read_detector_info, train_detector


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    images, labels = class_images(40, num_classes=3, res=8)
    return write_image_folder(tmp_path_factory.mktemp("data") / "squares", images, labels)


def test_learns_easy_classes_and_records_heldout_accuracy(tmp_path, labelled):
    result = train_detector(labelled, tmp_path / "cnn.safetensors", epochs=8, batch=16, progress=False)
    assert result.num_heldout == 12 and result.num_train == 108  # 10% of 120 held out
    info = read_detector_info(tmp_path / "cnn.safetensors")
    assert info["heldout_accuracy"] == result.heldout_accuracy
    assert result.heldout_accuracy >= 0.9
    assert info["config"]["num_classes"] == 3 and info["config"]["resolution"] == 8
    assert info["train"]["num_heldout"] == 12 and info["train"]["seed"] == 0
    model = load_detector(tmp_path / "cnn.safetensors")
    images, labels = class_images(10, num_classes=3, res=8, seed=99)  # fresh images
    with torch.no_grad():
        pred = model.logits(torch.from_numpy(images)).argmax(1).numpy()
    assert (pred == labels).mean() >= 0.9


def test_same_seed_gives_the_same_detector(tmp_path, labelled):
    a = train_detector(labelled, tmp_path / "a.safetensors", epochs=1, batch=32, progress=False)
    b = train_detector(labelled, tmp_path / "b.safetensors", epochs=1, batch=32, progress=False)
    assert a.heldout_accuracy == b.heldout_accuracy
    sa, sb = (
        load_detector(tmp_path / "a.safetensors").state_dict(),
        load_detector(tmp_path / "b.safetensors").state_dict(),
    )
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unlabelled_dataset_is_refused(tmp_path):
    images, _ = class_images(3, res=8)
    folder = write_image_folder(tmp_path / "nolabels", images)
    with pytest.raises(DataError, match="no class labels"):
        train_detector(folder, tmp_path / "x.safetensors", epochs=1, progress=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_prints_the_heldout_accuracy(tmp_path, labelled):
    dest = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(
        main, ["metrics", "train-detector", "--data", str(labelled), "--dest", str(dest), "--epochs", "1"]
    )
    assert r.exit_code == 0, r.output
    acc = read_detector_info(dest)["heldout_accuracy"]
    assert f"Held-out accuracy {acc:.4f} on 12 images" in r.output

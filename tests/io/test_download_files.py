"""`edm2 download` against a real HTTP server on 127.0.0.1 serving a directory index of tiny
official-format raw snapshots: complete and resumed transfers give the served bytes, finished
files are never fetched again, corrupted files fail their hash and leave nothing behind, 500s
are retried, and offline use fails at once with one line."""

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from official_pickles import TINY_NETWORK, make_official_pickles
from range_server import RangeServer

from edm2.cli import main
from edm2.errors import DownloadError
from edm2.io.download import MANIFEST, download_files, parse_index, read_manifest

NAMES = [f"network-snapshot-{kimg:07d}-{std:.3f}.pkl" for kimg in (2, 4) for std in (0.05, 0.1)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder of four official-format raw snapshots (two times, two EMA stds)."""
    root = tmp_path_factory.mktemp("served")
    specs = [dict(path=root / n, network_kwargs=TINY_NETWORK, seed=i) for i, n in enumerate(NAMES)]
    make_official_pickles(tmp_path_factory.mktemp("maker"), specs)
    for n in NAMES:
        (root / f"{n}.ref.safetensors").unlink()
    return root


@pytest.fixture
def server(served, monkeypatch):
    monkeypatch.delenv("EDM2_OFFLINE", raising=False)
    with RangeServer(served) as s:
        yield s


def same_files(served, dest, names=NAMES):
    return all((dest / n).read_bytes() == (served / n).read_bytes() for n in names)


def leftovers(dest):
    return sorted(p.name for p in dest.iterdir() if p.name.endswith(".part") or ".tmp" in p.name)


def fast(**kw):
    return dict(progress=False, backoff=0.01, timeout=5, **kw)


def test_index_page_parsing_keeps_only_files_of_the_folder():
    page = (
        '<a href="?C=N;O=D">Name</a><a href="../">Parent</a><a href="sub/">sub/</a>'
        '<a href="a-0000001-0.050.pkl">a</a><a href="http://other.host/x.pkl">x</a>'
        '<a href="/edm2/raw/run/b.pkl">b</a><a href="a-0000001-0.050.pkl">again</a>'
    )
    assert parse_index(page, "https://cdn.example/edm2/raw/run/") == [
        "https://cdn.example/edm2/raw/run/a-0000001-0.050.pkl",
        "https://cdn.example/edm2/raw/run/b.pkl",
    ]


def test_directory_download_equals_the_served_bytes_and_records_digests(served, server, tmp_path):
    dest = tmp_path / "raw"
    result = download_files([server.url], dest, jobs=3, **fast())
    assert sorted(result["downloaded"]) == NAMES and same_files(served, dest)
    manifest = read_manifest(dest / MANIFEST)
    assert manifest == {n: hashlib.sha256((served / n).read_bytes()).hexdigest() for n in NAMES}
    assert leftovers(dest) == []
    # A rerun verifies every file against the manifest and fetches nothing.
    before = len(server.gets(NAMES[0]))
    result = download_files([server.url], dest, jobs=3, **fast())
    assert result["downloaded"] == [] and sorted(result["verified"]) == NAMES
    assert len(server.gets(NAMES[0])) == before


def test_include_patterns_select_files(served, server, tmp_path):
    result = download_files([server.url], tmp_path / "d", include=["*-0.050.pkl"], jobs=2, **fast())
    assert sorted(result["downloaded"]) == [n for n in NAMES if n.endswith("0.050.pkl")]
    with pytest.raises(DownloadError, match="no file matches --include"):
        download_files([server.url], tmp_path / "d", include=["*-0.999.pkl"], **fast())


def test_a_connection_cut_mid_file_resumes_to_identical_bytes(served, server, tmp_path):
    name = NAMES[1]
    size = (served / name).stat().st_size
    server.faults[name] = {"drop_after": size // 3}
    dest = tmp_path / "d"
    download_files([server.url + name], dest, **fast())
    assert same_files(served, dest, [name])
    assert server.gets(name) == ["", f"bytes={size // 3}-"]  # the second request resumed


def test_retried_500_answers(served, server, tmp_path):
    server.faults[NAMES[0]] = {"status_times": 2, "status": 500}
    download_files([server.url + NAMES[0]], tmp_path / "d", **fast())
    assert same_files(served, tmp_path / "d", NAMES[:1]) and len(server.gets(NAMES[0])) == 3


def test_persistent_500_gives_up_after_the_retries(server, tmp_path):
    server.faults[NAMES[0]] = {"status_times": 100, "status": 503}
    with pytest.raises(DownloadError, match=r"HTTP 503 .*\(3 attempts in a row failed\); rerun to retry$"):
        download_files([server.url + NAMES[0]], tmp_path / "d", retries=2, **fast())
    assert len(server.gets(NAMES[0])) == 3


def test_a_server_without_range_support_restarts_from_zero(served, server, tmp_path):
    name = NAMES[2]
    server.faults[name] = {"drop_after": 1000, "ignore_range": True}
    download_files([server.url + name], tmp_path / "d", **fast())
    assert same_files(served, tmp_path / "d", [name])


def test_a_corrupted_file_fails_its_hash_and_leaves_nothing(served, server, tmp_path):
    dest = tmp_path / "d"
    name = NAMES[0]
    digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
    (tmp_path / "known").write_text(f"{digest}  {name}\n")
    server.faults[name] = {"corrupt": True}
    with pytest.raises(DownloadError) as e:
        download_files([server.url + name], dest, manifest=tmp_path / "known", **fast())
    message = str(e.value)
    assert name in message and digest in message and "\n" not in message
    data = (served / name).read_bytes()
    assert hashlib.sha256(bytes([data[0] ^ 0xFF]) + data[1:]).hexdigest() in message
    assert not (dest / name).exists() and leftovers(dest) == []
    assert name not in read_manifest(dest / MANIFEST)


def test_a_file_damaged_after_download_is_fetched_again(served, server, tmp_path):
    dest = tmp_path / "d"
    name = NAMES[3]
    download_files([server.url + name], dest, **fast())
    with open(dest / name, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    result = download_files([server.url + name], dest, **fast())
    assert result["downloaded"] == [name] and same_files(served, dest, [name])


def closed_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    runner = CliRunner()
    url = f"http://127.0.0.1:{closed_port()}/raw/"
    t0 = time.monotonic()
    r = runner.invoke(main, ["download", url + "a.pkl", "--dest", str(tmp_path / "d"), "--no-progress"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and url + "a.pkl" in r.output
    assert "cannot be reached" in r.output and time.monotonic() - t0 < 5  # no retries
    monkeypatch.setenv("EDM2_OFFLINE", "1")
    r = runner.invoke(main, ["download", url, "--dest", str(tmp_path / "d"), "--no-progress"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "EDM2_OFFLINE" in r.output and url in r.output


def test_cli_dry_run_lists_the_matching_files(server):
    r = CliRunner().invoke(main, ["download", server.url, "--dest", "unused", "--include", "*-0000004-*", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [server.url + n for n in NAMES if "-0000004-" in n]


def test_a_killed_client_resumes_without_refetching_finished_files(served, server, tmp_path):
    """SIGKILL the `edm2 download` process mid-transfer (the server sends slowly), then rerun."""
    dest = tmp_path / "d"
    server.httpd.delay = 0.02  # 4 KiB every 20 ms
    cmd = [sys.executable, "-m", "edm2", "download", server.url, "--dest", str(dest), "--jobs", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # one file finished and the next one half-way
            parts = list(dest.glob("*.part")) if dest.exists() else []
            done = [n for n in NAMES if (dest / n).exists()]
            try:  # a .part listed a moment ago may have been completed (renamed) since
                if done and parts and parts[0].stat().st_size > 8192:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        else:
            pytest.fail("the client made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = [n for n in NAMES if (dest / n).exists()]
    partial = [p.name.removesuffix(".part") for p in dest.glob("*.part")]
    assert finished and len(partial) == 1
    cut = (dest / (partial[0] + ".part")).stat().st_size
    gets_before = {n: len(server.gets(n)) for n in NAMES}
    server.httpd.delay = 0.0
    r = CliRunner().invoke(main, ["download", server.url, "--dest", str(dest), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert same_files(served, dest) and leftovers(dest) == []
    for n in finished:
        assert len(server.gets(n)) == gets_before[n]  # never fetched again
    assert server.gets(partial[0])[-1] == f"bytes={cut}-"
    assert set(read_manifest(dest / MANIFEST)) == set(NAMES)


def test_parallel_downloads_of_one_url_into_the_cache_transfer_it_once(served, server, tmp_path, monkeypatch):
    """Parallel jobs that need the same file (e.g. every score job's --ref URL): one transfer,
    the others wait for it and verify the finished file."""
    import threading

    from edm2.io.download import download

    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    server.httpd.delay = 0.005
    url = server.url + NAMES[0]
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(download(url, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 3 and len(set(paths)) == 1
    assert paths[0].read_bytes() == (served / NAMES[0]).read_bytes()
    assert server.gets(NAMES[0]) == [""]


def test_link_into_gives_a_view_that_can_be_remade_without_fetching(server, served, tmp_path):
    dest, view = tmp_path / "stage", tmp_path / "view"
    run = ["download", server.url, "--dest", str(dest), "--no-progress", "--link-into", str(view)]
    result = CliRunner().invoke(main, run)
    assert result.exit_code == 0, result.output
    assert same_files(served, view) and all((view / n).stat().st_ino == (dest / n).stat().st_ino for n in NAMES)
    assert read_manifest(view / MANIFEST) == read_manifest(dest / MANIFEST)
    # The view deleted (as a workflow rerun does) and made again for a narrower selection:
    # only those files, nothing fetched.
    for p in view.iterdir():
        p.unlink()
    view.rmdir()
    result = CliRunner().invoke(main, run + ["--include", "*-0.050.pkl"])
    assert result.exit_code == 0, result.output
    chosen = [n for n in NAMES if n.endswith("-0.050.pkl")]
    assert sorted(p.name for p in view.iterdir()) == sorted(chosen + [MANIFEST])
    assert sorted(read_manifest(view / MANIFEST)) == sorted(chosen)
    assert all(server.gets(n) == [""] for n in NAMES)  # each fetched once, in the first run


def test_move_into_leaves_only_the_digests_behind(server, served, tmp_path):
    dest, into = tmp_path / "stage", tmp_path / "raw"
    args = ["download", server.url, "--dest", str(dest), "--no-progress", "--move-into", str(into)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert same_files(served, into) and sorted(p.name for p in dest.iterdir()) == [MANIFEST]
    assert read_manifest(into / MANIFEST) == read_manifest(dest / MANIFEST)
    result = CliRunner().invoke(main, args + ["--link-into", str(tmp_path / "x")])
    assert result.exit_code == 1 and "give --link-into or --move-into, not both" in result.output

"""`edm2 download` and the cache against a real HTTP server on 127.0.0.1, for the faults a
newcomer trial found (notes try12): a wrong given digest never deletes a good file; a resumed
`.part` is never stitched from two versions of a server's file; a complete `.part` is not
fetched again; unsafe names of an index page never become paths, a served SHA256SUMS gives the
digests; bad options and URLs are one line before any work; an offline rerun of a folder
verifies it; free space is checked first and a write error names the file being written; lock
files are not left behind; and the messages fit what happened."""

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from range_server import RangeServer

from edm2.cli import main
from edm2.errors import DownloadError
from edm2.io.download import MANIFEST, OVERLAP, cached_path, download, download_files, file_lock, read_manifest

NAMES = ["f0.bin", "f1.bin", "f2.bin"]
SIZE = 150_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for i, n in enumerate(NAMES):
        (root / n).write_bytes(os.urandom(SIZE + i))
    return root


@pytest.fixture
def server(served, monkeypatch):
    monkeypatch.delenv("EDM2_OFFLINE", raising=False)
    monkeypatch.delenv("EDM2_DOWNLOAD_TIMEOUT", raising=False)
    with RangeServer(served) as s:
        yield s


def fast(**kw):
    return dict(progress=False, backoff=0.01, timeout=5, **kw)


def cli(*args, env=None):
    return CliRunner().invoke(main, ["download", *map(str, args), "--no-progress"], env=env)


def hidden_or_partial(folder):
    """Lock, state, temporary and partial files left in `folder` (and next to it)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


def closed_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fault 2: a digest given from outside never deletes a good file ----------------------------


def test_a_wrong_digest_for_a_present_file_is_an_error_that_deletes_and_fetches_nothing(served, server, tmp_path):
    dest = tmp_path / "d"
    download_files([server.url], dest, **fast())
    recorded = read_manifest(dest / MANIFEST)
    gets = len(server.log)
    wrong = "0" * 64
    r = cli(f"{server.url}f0.bin#sha256={wrong}", "--dest", dest)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert wrong in r.output and sha((served / "f0.bin").read_bytes()) in r.output
    assert f"fix the digest, or delete {dest / 'f0.bin'} to download it again" in r.output
    # --manifest with a wrong line, the recorded manifest gone: the file has no record of its own.
    (dest / MANIFEST).unlink()
    (tmp_path / "other").write_text(f"{'1' * 64}  f1.bin\n")
    r = cli(server.url, "--dest", dest, "--manifest", tmp_path / "other")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "1" * 64 in r.output and "f1.bin" in r.output
    assert all((dest / n).read_bytes() == (served / n).read_bytes() for n in NAMES)
    assert [e for e in server.log[gets:] if e[1] in NAMES] == []  # nothing fetched (not even a HEAD)
    assert read_manifest(dest / MANIFEST) == {}  # nothing recorded on the way to the error
    # The right digests from --manifest: verified and recorded, nothing fetched.
    (tmp_path / "other").write_text("".join(f"{d}  {n}\n" for n, d in recorded.items()))
    r = cli(server.url, "--dest", dest, "--manifest", tmp_path / "other")
    assert r.exit_code == 0 and "0 downloaded" in r.output and "3 already there" in r.output
    assert read_manifest(dest / MANIFEST) == recorded and hidden_or_partial(dest) == []


def test_a_file_damaged_since_it_was_recorded_is_fetched_again_under_a_given_digest(served, server, tmp_path):
    dest = tmp_path / "d"
    download_files([server.url + "f1.bin"], dest, **fast())
    (dest / "f1.bin").write_bytes(b"damaged")
    good = sha((served / "f1.bin").read_bytes())
    # The recorded digest differs from the file: it is not the user's good data, fetch it again.
    (dest / MANIFEST).write_text(f"{'2' * 64}  f1.bin\n")
    result = download_files([f"{server.url}f1.bin#sha256={good}"], dest, **fast())
    assert result["downloaded"] == ["f1.bin"] and (dest / "f1.bin").read_bytes() == (served / "f1.bin").read_bytes()
    assert read_manifest(dest / MANIFEST) == {"f1.bin": good}


# -- fault 4: a .part is resumed only from the same version of the server's file ---------------


def interrupted(server, dest, name, cut):
    """Leave `dest/name.part` of `cut` bytes, as a cut connection with no retries left does."""
    server.faults.setdefault(name, {})["drop_after"] = cut
    with pytest.raises(DownloadError, match=rf"rerun to resume from .*{name}\.part"):
        download_files([server.url + name], dest, retries=0, **fast())
    assert (dest / f"{name}.part").stat().st_size == cut


def test_a_part_of_a_file_replaced_on_the_server_restarts_from_zero(served, server, tmp_path):
    dest = tmp_path / "d"
    interrupted(server, dest, "f0.bin", 50_000)
    (served / "f0.bin").write_bytes(os.urandom(SIZE))  # same size, other bytes (a re-upload)
    download_files([server.url + "f0.bin"], dest, **fast())
    assert (dest / "f0.bin").read_bytes() == (served / "f0.bin").read_bytes()
    assert server.gets("f0.bin")[-1] == "bytes=50000-" and server.if_ranges("f0.bin")[-1].startswith('"')
    assert hidden_or_partial(dest) == []


def test_without_validators_a_part_is_resumed_only_under_a_digest(served, server, tmp_path):
    """No ETag, no Last-Modified: the same size is not the same file (issue 25 item 4), so a
    `.part` is fetched again from byte 0 unless a digest will check the result (then its last
    bytes are compared first: tests/io/test_download_bounds.py)."""
    dest = tmp_path / "d"
    server.faults["f1.bin"] = {"no_validators": True}
    interrupted(server, dest, "f1.bin", 40_000)
    server.faults["f1.bin"] = {"no_validators": True}
    (served / "f1.bin").write_bytes(os.urandom(SIZE + 7))
    before = len(server.gets("f1.bin"))
    download_files([server.url + "f1.bin"], dest, **fast())
    assert (dest / "f1.bin").read_bytes() == (served / "f1.bin").read_bytes()
    assert server.gets("f1.bin")[before:] == [""]  # from byte 0, without asking for a range
    # The same file, interrupted, with its digest: resumed (the last 64 KiB compared), identical bytes.
    good = sha((served / "f1.bin").read_bytes())
    (dest / "f1.bin").unlink()
    interrupted(server, dest, "f1.bin", 80_000)
    download_files([f"{server.url}f1.bin#sha256={good}"], dest, **fast())
    assert server.gets("f1.bin")[-1] == f"bytes={80_000 - OVERLAP}-"
    assert (dest / "f1.bin").read_bytes() == (served / "f1.bin").read_bytes()


def test_a_part_with_no_record_of_its_version_is_not_resumed(served, server, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "f2.bin.part").write_bytes(os.urandom(100_000))  # left by some earlier version
    download_files([server.url + "f2.bin"], dest, **fast())
    assert (dest / "f2.bin").read_bytes() == (served / "f2.bin").read_bytes()
    assert server.gets("f2.bin") == [""]  # no record and no digest: not even asked for a range


def test_a_resumed_part_sends_if_range_and_continues_when_unchanged(served, server, tmp_path):
    dest = tmp_path / "d"
    interrupted(server, dest, "f0.bin", 60_000)
    download_files([server.url + "f0.bin"], dest, **fast())
    assert server.gets("f0.bin")[-1] == "bytes=60000-" and server.if_ranges("f0.bin")[-1].startswith('"')
    assert (dest / "f0.bin").read_bytes() == (served / "f0.bin").read_bytes()


# -- fault 9: a complete .part is verified and renamed ----------------------------------------


def test_a_complete_part_is_renamed_not_fetched_again(served, server, tmp_path, monkeypatch):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "f0.bin.part").write_bytes((served / "f0.bin").read_bytes())
    # Size known from HEAD, no record of its version: the digest proves it (without one it is
    # fetched again: tests/io/test_download_bounds.py).
    good = sha((served / "f0.bin").read_bytes())
    result = download_files([f"{server.url}f0.bin#sha256={good}"], dest, **fast())
    assert result["downloaded"] == ["f0.bin"] and server.gets("f0.bin") == []
    assert (dest / "f0.bin").read_bytes() == (served / "f0.bin").read_bytes() and hidden_or_partial(dest) == []
    # The cache (no HEAD), a digest and no record: the .part's last 64 KiB are asked again and
    # compared; nothing follows them.
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    url = server.url + "f1.bin"
    part = cached_path(url).with_name(cached_path(url).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((served / "f1.bin").read_bytes())
    good = sha((served / "f1.bin").read_bytes())
    assert download(f"{url}#sha256={good}", progress=False).read_bytes() == (served / "f1.bin").read_bytes()
    assert server.gets("f1.bin") == [f"bytes={SIZE + 1 - OVERLAP}-"]


# -- fault 5: names from an index page --------------------------------------------------------


def test_unsafe_index_names_are_skipped_and_a_served_manifest_gives_the_digests(served, server, tmp_path):
    (served / "q.bin").write_bytes(b"query")
    (served / MANIFEST).write_text(f"{sha((served / 'f0.bin').read_bytes())}  f0.bin\n{sha(b'query')} *q.bin\n")
    server.httpd.index_links = [
        "%2e%2e",
        "%2e",
        "%2E%2e/evil.bin",
        "..%2fevil.bin",
        "a%5cb.bin",
        "%00.bin",
        ".f0.bin.lock",
        "f1.bin.part",
        MANIFEST,
        "f0.bin",
        "q.bin?download=1",
    ]
    dest = tmp_path / "out" / "d"
    result = download_files([server.url], dest, **fast())
    assert sorted(result["downloaded"]) == ["f0.bin", "q.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d"]  # nothing next to DEST
    assert sorted(p.name for p in dest.iterdir()) == [MANIFEST, "f0.bin", "q.bin"]
    assert read_manifest(dest / MANIFEST) == read_manifest(served / MANIFEST)
    assert server.gets(MANIFEST) == [""] and server.gets("f1.bin.part") == []
    # A rerun fetches nothing again; the manifest of DEST is the local one.
    result = download_files([server.url], dest, **fast())
    assert result["downloaded"] == [] and sorted(result["verified"]) == ["f0.bin", "q.bin"]
    # The served digests check the first download: a server file that disagrees is refused.
    (served / MANIFEST).write_text(f"{'3' * 64}  f2.bin\n")
    server.httpd.index_links = ["f2.bin", MANIFEST]
    with pytest.raises(DownloadError, match=f"f2.bin: SHA-256 mismatch .*expected {'3' * 64}"):
        download_files([server.url], tmp_path / "e", **fast())
    assert not (tmp_path / "e" / "f2.bin").exists()
    # A served digest that differs from a present, recorded file: one line, nothing deleted.
    (served / MANIFEST).write_text(f"{'4' * 64}  f0.bin\n")
    server.httpd.index_links = ["f0.bin", MANIFEST]
    with pytest.raises(DownloadError, match=f"the given SHA-256 {'4' * 64} \\(the SHA256SUMS the folder serves\\)"):
        download_files([server.url], dest, **fast())
    assert (dest / "f0.bin").read_bytes() == (served / "f0.bin").read_bytes()


# -- fault 6: bad options and URLs, one line, before anything ----------------------------------


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://", "no host"),
        ("http://[::1/x", "invalid IPv6 URL"),
        ("http://127.0.0.1:99999/x", "port out of range"),
        ("http://127.0.0.1/a b.pkl", "contains a space"),
        ("http://a..b/x.pkl", "malformed"),
    ],
)
def test_a_malformed_url_is_one_line_before_anything(tmp_path, url, reason):
    r = cli(url, "--dest", tmp_path / "d")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith(f"Error: '{url}': not a valid URL (") and reason in r.output, r.output
    assert not (tmp_path / "d").exists()


def test_timeout_must_be_finite(tmp_path, monkeypatch):
    for value in ("nan", "inf", "-1"):
        r = cli("http://127.0.0.1/x.pkl", "--dest", tmp_path / "d", "--timeout", value)
        assert r.exit_code == 2 and "--timeout" in r.output and "Traceback" not in r.output
    monkeypatch.setenv("EDM2_DOWNLOAD_TIMEOUT", "nan")
    r = cli("http://127.0.0.1/x.pkl", "--dest", tmp_path / "d")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "EDM2_DOWNLOAD_TIMEOUT=nan" in r.output


# -- fault 8: an offline rerun of a folder -----------------------------------------------------


def test_offline_rerun_of_a_folder_verifies_the_recorded_files(served, server, tmp_path):
    dest = tmp_path / "d"
    download_files([server.url], dest, **fast())
    requests_before = len(server.log)
    r = cli(server.url, "--dest", dest, "--include", "f[01].bin", env={"EDM2_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    assert "listing of" in r.output and "was not read" in r.output and "2 already there and verified" in r.output
    assert len(server.log) == requests_before
    r = cli(server.url, "--dest", tmp_path / "empty", env={"EDM2_OFFLINE": "1"})
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "the folder listing needs the network" in r.output
    # The host cannot be reached: the same.
    url = f"http://127.0.0.1:{closed_port()}/"
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "f0.bin").write_bytes((served / "f0.bin").read_bytes())
    (tmp_path / "e" / MANIFEST).write_text(f"{sha((served / 'f0.bin').read_bytes())}  f0.bin\n")
    r = cli(url, "--dest", tmp_path / "e")
    assert r.exit_code == 0 and "cannot be reached" in r.output and "1 already there" in r.output, r.output


# -- fault 10: disk space and write errors ----------------------------------------------------


def test_not_enough_free_space_is_reported_before_any_transfer(served, server, tmp_path):
    server.faults["f0.bin"] = {"head_size": 1 << 50}  # the server says 1 PiB (--max-bytes allows it)
    r = cli(server.url + "f0.bin", "--dest", tmp_path / "d", "--max-bytes", "2048T")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"Error: --dest {tmp_path / 'd'}: ") and " needed, " in r.output
    assert " free; free space or pass another --dest" in r.output and server.gets("f0.bin") == []


def test_a_write_error_mid_transfer_names_the_partial_file(served, server, tmp_path):
    """A real process whose files may not grow beyond 64 KiB (RLIMIT_FSIZE: EFBIG on write)."""
    dest = tmp_path / "d"
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
        "from edm2.cli import main; sys.argv = ['edm2'] + sys.argv[1:]; main()"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-c", code, "download", server.url + "f0.bin", "--dest", str(dest), "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot write {dest / 'f0.bin.part'}: File too large; free space or pass another --dest" in r.stderr
    assert "Traceback" not in r.stderr and not (dest / "f0.bin").exists()


# -- fault 11: messages and bookkeeping -------------------------------------------------------


def test_no_lock_files_are_left_and_messages_fit(served, server, tmp_path, monkeypatch):
    dest = tmp_path / "d"
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download_files([server.url + "nope.bin"], dest, **fast())
    download_files([server.url], dest, **fast())
    assert hidden_or_partial(dest) == []
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    download(server.url + "f0.bin", progress=False)
    assert hidden_or_partial(tmp_path / "cache" / "downloads") == []
    # Connection refused: no object reprs, a hint that fits the command.
    r = cli(f"http://127.0.0.1:{closed_port()}/x.bin", "--dest", dest)
    assert "(connection refused); check the network connection and the URL" in r.output, r.output
    assert "HTTPConnection" not in r.output and "local path" not in r.output
    # The same URL with and without its digest counts once; two digests for it are an error.
    good = sha((served / "f0.bin").read_bytes())
    r = cli(server.url + "f0.bin", f"{server.url}f0.bin#sha256={good}", "--dest", dest)
    assert r.exit_code == 0 and "1 already there and verified" in r.output, r.output
    r = cli(f"{server.url}f0.bin#sha256={good}", f"{server.url}f0.bin#sha256={'5' * 64}", "--dest", dest)
    assert r.exit_code == 1 and "given with two digests" in r.output
    # A digest on a folder URL points to --manifest.
    r = cli(f"{server.url}#sha256={good}", "--dest", dest)
    assert r.exit_code == 1 and "--manifest" in r.output and r.output.count("\n") == 1


def test_file_urls_name_folders_and_never_advise_deleting_the_source(tmp_path):
    src = tmp_path / "net.pkl"
    src.write_bytes(b"mine")
    with pytest.raises(DownloadError) as e:
        download(f"{src.as_uri()}#sha256={'0' * 64}", progress=False)
    assert sha(b"mine") in str(e.value) and "delete" not in str(e.value) and src.read_bytes() == b"mine"
    with pytest.raises(DownloadError, match="is a folder; give the URL of a file"):
        download(tmp_path.as_uri() + "/", progress=False)


def test_concurrent_processes_transfer_each_file_once_and_count_it_once(served, server, tmp_path):
    """Two `edm2 download` processes into one folder: the bytes of each file cross the wire
    once, and only one process reports it as downloaded."""
    server.httpd.delay = 0.001
    dest = tmp_path / "d"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "edm2", "download", server.url, "--dest", str(dest), "--no-progress", "--jobs", "3"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    downloaded = [int(o.split(": ")[1].split(" downloaded")[0]) for o in outputs]
    verified = [int(o.split("), ")[1].split(" already")[0]) for o in outputs]
    assert sum(downloaded) == 3 and sum(verified) == 3, outputs
    assert all(len(server.gets(n)) == 1 for n in NAMES)
    assert all((dest / n).read_bytes() == (served / n).read_bytes() for n in NAMES)
    assert hidden_or_partial(dest) == []


def test_file_lock_excludes_across_threads_and_leaves_no_file(tmp_path):
    counter, lock_path = tmp_path / "counter", tmp_path / ".counter.lock"
    counter.write_text("0")

    def work():
        for _ in range(200):
            with file_lock(lock_path):
                counter.write_text(str(int(counter.read_text()) + 1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "800" and not lock_path.exists()

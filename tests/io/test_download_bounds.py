"""`edm2 download`, the cache and `generate --net URL` against hostile servers on 127.0.0.1
(issue 25, items 1 and 4): a body without Content-Length is bounded by the size the server gave
(HEAD) or --max-bytes, and nothing resumable is left; an index page that never ends is one line;
a server that trickles bytes is stopped by the minimum rate or the deadline, with one line naming
the URL and the rate; and a `.part` that no validator proves is never stitched to another
version of the file. Every server loop here stops by itself (a bounded body or a time limit)."""

import hashlib
import os
import time

import pytest
from click.testing import CliRunner
from range_server import RangeServer

from edm2.cli import main
from edm2.errors import DownloadError
from edm2.io.download import (
    MANIFEST,
    MAX_PAGE_BYTES,
    OVERLAP,
    cached_path,
    check_limits,
    download,
    download_files,
    read_manifest,
)

SIZE = 150_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for i, n in enumerate(["f0.bin", "f1.bin", "net.pkl"]):
        (root / n).write_bytes(os.urandom(SIZE + i))
    return root


@pytest.fixture
def server(served, monkeypatch, tmp_path):
    for var in ("OFFLINE", "TIMEOUT", "MAX_BYTES", "MIN_RATE", "RATE_WINDOW", "DEADLINE"):
        monkeypatch.delenv(f"EDM2_DOWNLOAD_{var}" if var != "OFFLINE" else "EDM2_OFFLINE", raising=False)
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    with RangeServer(served) as s:
        yield s


def fast(**kw):
    return dict(progress=False, backoff=0.01, timeout=5, **kw)


def cli(*args, env=None):
    return CliRunner().invoke(main, ["download", *map(str, args), "--no-progress"], env=env)


def leftovers(folder):
    """Lock, state and partial files in `folder`."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


def one_line_error(r):
    assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("Error: "), r.output
    assert "Traceback" not in r.output
    return r.output


# -- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_without_length_is_bounded_by_max_bytes_and_leaves_nothing_resumable(server, tmp_path, chunked):
    server.faults["f0.bin"] = {"endless": 8 << 20, "chunked": chunked}  # 8 MiB without Content-Length
    url = server.url + "f0.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download(url, max_bytes="1M", **fast())
    message = str(e.value)
    assert message.startswith(f"cannot download {url}: the server sent more than 1048576 bytes (--max-bytes")
    assert "raise --max-bytes" in message and "\n" not in message
    assert leftovers(cached_path(url).parent) == [] and not cached_path(url).exists()
    assert time.monotonic() - t0 < 30
    # The same through the environment, as `generate --net URL` downloads (no options of its own).
    server.faults["f0.bin"] = {"endless": 8 << 20}
    with pytest.raises(DownloadError, match="more than 2097152 bytes"):
        os.environ["EDM2_DOWNLOAD_MAX_BYTES"] = "2MiB"
        try:
            download(url, progress=False, backoff=0.01, timeout=5)
        finally:
            del os.environ["EDM2_DOWNLOAD_MAX_BYTES"]
    assert leftovers(cached_path(url).parent) == []


def test_edm2_download_bounds_an_unsized_body_by_the_head_size(server, tmp_path):
    server.faults["f1.bin"] = {"endless": 4 << 20}  # HEAD says 150001 bytes; the GET never says
    dest = tmp_path / "d"
    out = one_line_error(cli(server.url + "f1.bin", "--dest", dest, "--retries", "0"))
    assert f"cannot download {server.url}f1.bin: the server sent more than {SIZE + 1} bytes" in out
    assert "the size its HEAD answer gave" in out and leftovers(dest) == []


def test_a_file_over_max_bytes_is_refused_before_any_transfer(served, server, tmp_path):
    # HEAD gives the size: refused before any GET, one line.
    server.faults["f0.bin"] = {"head_size": 1 << 40}
    out = one_line_error(cli(server.url + "f0.bin", "--dest", tmp_path / "d", "--max-bytes", "1G"))
    assert f"f0.bin: its size, {1 << 40} bytes (HEAD), is over the limit of {1 << 30} bytes (--max-bytes" in out
    assert server.gets("f0.bin") == []
    # The cache (no HEAD): Content-Length over the limit, refused before writing a byte.
    url = server.url + "f1.bin"
    with pytest.raises(DownloadError, match=rf"its size, {SIZE + 1} bytes, is over the limit of 1000 bytes"):
        download(url, max_bytes=1000, **fast())
    assert leftovers(cached_path(url).parent) == [] and len(server.gets("f1.bin")) == 1


def test_a_body_without_length_never_fills_the_disk(server, tmp_path, monkeypatch):
    import shutil

    from edm2.io.download import transfer

    real = shutil.disk_usage
    free = transfer.KEEP_FREE + (1 << 20)  # 1 MiB above what is kept free

    def usage(path):
        return real(path)._replace(free=free)

    monkeypatch.setattr(transfer.shutil, "disk_usage", usage)
    server.faults["f0.bin"] = {"endless": 8 << 20}
    url = server.url + "f0.bin"
    with pytest.raises(DownloadError) as e:
        download(url, **fast())
    assert f"the server sent more than {1 << 20} bytes (the free space of " in str(e.value)
    assert "MiB kept free); the transfer was removed; free space or set EDM2_CACHE_DIR" in str(e.value)
    assert leftovers(cached_path(url).parent) == []
    # A size that is said and does not fit: refused before the first byte.
    free = 1000
    with pytest.raises(DownloadError, match=rf"cannot download .*f1.bin: {SIZE + 1} more bytes needed, 1000 free in "):
        download(server.url + "f1.bin", **fast())


def test_an_index_page_that_never_ends_is_one_line(server, tmp_path):
    server.httpd.index_endless = MAX_PAGE_BYTES + (8 << 20)
    out = one_line_error(cli(server.url, "--dest", tmp_path / "d"))
    assert f"cannot list {server.url}: the page is longer than {MAX_PAGE_BYTES} bytes" in out
    out = one_line_error(CliRunner().invoke(main, ["download", server.url, "--dest", tmp_path / "d", "--dry-run"]))
    assert "the page is longer than" in out


def test_a_compressed_index_page_is_bounded_once_decoded(server, tmp_path):
    server.httpd.index_gzip = MAX_PAGE_BYTES + (16 << 20)  # 32 MiB of zeros, a few KiB sent
    out = one_line_error(cli(server.url, "--dest", tmp_path / "d"))
    assert f"cannot list {server.url}: the page is longer than {MAX_PAGE_BYTES} bytes" in out


def test_manifest_and_list_files_that_never_end_are_one_line(tmp_path):
    out = one_line_error(cli("http://127.0.0.1:9/x.bin", "--dest", tmp_path / "d", "--manifest", "/dev/zero"))
    assert "/dev/zero: not a regular file; give a sha256sum-format file" in out
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(MAX_PAGE_BYTES + 1)
    out = one_line_error(cli("http://127.0.0.1:9/x.bin", "--dest", tmp_path / "d", "--manifest", big))
    assert f"{big}: larger than {MAX_PAGE_BYTES} bytes" in out
    out = one_line_error(cli("--list", "/dev/zero", "--dest", tmp_path / "d"))
    assert "--list /dev/zero: longer than" in out
    # The manifest of DEST itself.
    (tmp_path / "e").mkdir()
    os.symlink("/dev/zero", tmp_path / "e" / MANIFEST)
    out = one_line_error(cli("http://127.0.0.1:9/x.bin", "--dest", tmp_path / "e"))
    assert f"{MANIFEST}: not a regular file" in out


# -- rate and time ------------------------------------------------------------------------------


def test_a_trickling_server_is_stopped_by_the_minimum_rate(server, tmp_path):
    server.faults["f0.bin"] = {"trickle": 0.02, "trickle_for": 60}  # about 50 bytes/s
    url = server.url + "f0.bin"
    t0 = time.monotonic()
    out = one_line_error(cli(url, "--dest", tmp_path / "d", "--min-rate", "1000", "--rate-window", "0.5"))
    assert time.monotonic() - t0 < 30
    assert f"cannot download {url}: " in out and " bytes/s over the last " in out
    assert "below the minimum of 1000 bytes/s (--min-rate" in out
    rate = float(out.split(f"cannot download {url}: ")[1].split(" bytes/s")[0])
    assert 1 <= rate < 1000
    # Not retried: a slow server that makes progress would otherwise be retried for ever.
    assert len(server.gets("f0.bin")) == 1


def test_a_deadline_bounds_a_transfer_that_keeps_the_rate(server, tmp_path):
    server.faults["f1.bin"] = {"trickle": 0.002, "trickle_for": 60}
    url = server.url + "f1.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete after \d+ s, over the deadline of 1 s \(--deadline"):
        download_files([url], tmp_path / "d", min_rate=0, deadline=1, **fast())
    assert time.monotonic() - t0 < 30


def test_a_server_that_trickles_its_headers_is_cut(server, tmp_path):
    """The status line and headers one byte every 50 ms: each byte comes within the read timeout,
    so only the bound on the whole head stops it (here 1 s: the larger of --rate-window and
    --timeout)."""
    server.faults["f0.bin"] = {"trickle_headers": 0.05, "trickle_for": 60}
    url = server.url + "f0.bin"
    t0 = time.monotonic()
    args = ("--timeout", "1", "--min-rate", "1000", "--rate-window", "0.5", "--retries", "0")
    out = one_line_error(cli(url, "--dest", tmp_path / "d", *args))
    assert f"cannot download {url}: the server's answer did not finish its status line and headers within 1 s" in out
    assert time.monotonic() - t0 < 30 and leftovers(tmp_path / "d") == []
    # The index page of a folder, and the cache.
    server.faults[""] = {"trickle_headers": 0.05, "trickle_for": 60}
    out = one_line_error(cli(server.url, "--dest", tmp_path / "d", *args))
    assert f"cannot list {server.url}: the server's answer did not finish its status line and headers" in out
    with pytest.raises(DownloadError, match="did not finish its status line and headers within 2 s"):
        download(url, progress=False, timeout=1, deadline=2, min_rate=0)
    assert time.monotonic() - t0 < 60


def test_a_head_cut_short_by_the_server_is_not_taken_for_an_empty_file(server, tmp_path):
    """A connection closed in the middle of the headers: http.client takes what came as the whole
    head (a 200 without length and an empty body); it is a failed attempt, not a file."""
    server.faults["f0.bin"] = {"trickle_headers": 0.001, "trickle_for": 0.05}
    with pytest.raises(DownloadError, match=r"closed in the middle of the answer's headers \(2 attempts"):
        download_files([server.url + "f0.bin"], tmp_path / "d", retries=1, **fast())
    assert not (tmp_path / "d" / "f0.bin").exists() and read_manifest(tmp_path / "d" / MANIFEST) == {}
    server.faults[""] = {"trickle_headers": 0.001, "trickle_for": 0.05}
    with pytest.raises(DownloadError, match=r"cannot list .*closed in the middle of the answer's headers"):
        download_files([server.url], tmp_path / "d", retries=1, **fast())


def test_generate_net_url_inherits_the_bounds_from_the_environment(server, tmp_path):
    server.faults["net.pkl"] = {"trickle": 0.02, "trickle_for": 60}
    env = {"EDM2_DOWNLOAD_MIN_RATE": "1000", "EDM2_DOWNLOAD_RATE_WINDOW": "0.5"}
    t0 = time.monotonic()
    r = CliRunner().invoke(
        main, ["generate", "--net", server.url + "net.pkl", "--outdir", str(tmp_path / "out"), "--seeds", "0"], env=env
    )
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    out = r.output.rsplit("\r", 1)[-1].strip().splitlines()[-1]  # after the progress bar
    assert out.startswith(f"Error: cannot download {server.url}net.pkl: "), r.output
    assert "rerun to resume from" in out and "below the minimum of 1000 bytes/s" in out
    assert time.monotonic() - t0 < 60
    part = cached_path(server.url + "net.pkl").with_name(cached_path(server.url + "net.pkl").name + ".part")
    assert part.is_file() and part.stat().st_size < SIZE  # kept to resume: the server gives an ETag


def test_a_slow_but_working_link_passes_the_bounds(served, server, tmp_path):
    server.httpd.delay = 0.01  # 4 KiB every 10 ms: about 400 KB/s
    result = download_files([server.url + "f0.bin"], tmp_path / "d", min_rate=1000, rate_window=0.2, **fast())
    assert result["downloaded"] == ["f0.bin"]
    assert (tmp_path / "d" / "f0.bin").read_bytes() == (served / "f0.bin").read_bytes()


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--max-bytes", "abc", "--max-bytes 'abc': not a number of bytes"),
        ("--max-bytes", "0", "--max-bytes '0': not a number of bytes"),
        ("--min-rate", "nan", "--min-rate"),
        ("--deadline", "-1", "--deadline"),
        ("--rate-window", "0", "--rate-window"),
    ],
)
def test_bad_limits_are_refused_before_anything(tmp_path, option, value, words):
    r = cli("http://127.0.0.1:9/x.bin", "--dest", tmp_path / "d", option, value)
    assert r.exit_code in (1, 2) and words in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "d").exists()


def test_bad_limits_from_the_environment_are_one_line(monkeypatch):
    monkeypatch.setenv("EDM2_DOWNLOAD_MIN_RATE", "inf")
    with pytest.raises(DownloadError, match=r"^EDM2_DOWNLOAD_MIN_RATE=inf: not a finite number"):
        check_limits()
    monkeypatch.setenv("EDM2_DOWNLOAD_MIN_RATE", "0")
    monkeypatch.setenv("EDM2_DOWNLOAD_MAX_BYTES", "64G")
    monkeypatch.setenv("EDM2_DOWNLOAD_DEADLINE", "0")
    limits = check_limits()
    assert limits.min_rate == 0 and limits.max_bytes == 64 << 30 and limits.deadline is None


# -- a resume that no validator proves ------------------------------------------------------------


def interrupt(server, dest, name, cut, **kw):
    """Leave `dest/name.part` of `cut` bytes from a server without validators."""
    server.faults[name] = {"no_validators": True, "drop_after": cut}
    with pytest.raises(DownloadError, match="rerun to"):
        download_files([server.url + name + kw.pop("suffix", "")], dest, retries=0, **fast())
    assert (dest / f"{name}.part").stat().st_size == cut
    server.faults[name] = {"no_validators": True}


def test_without_validator_or_digest_a_part_is_fetched_from_zero(served, server, tmp_path):
    dest = tmp_path / "d"
    old = (served / "f0.bin").read_bytes()
    interrupt(server, dest, "f0.bin", 100_000)
    new = os.urandom(SIZE)  # another file of the same size, no ETag, no Last-Modified
    (served / "f0.bin").write_bytes(new)
    download_files([server.url + "f0.bin"], dest, **fast())
    assert (dest / "f0.bin").read_bytes() == new != old
    assert server.gets("f0.bin")[-1] == ""  # not resumed
    assert read_manifest(dest / MANIFEST) == {"f0.bin": sha(new)} and leftovers(dest) == []
    # The rerun verifies the file it recorded (the new version, not a stitch).
    result = download_files([server.url + "f0.bin"], dest, **fast())
    assert result["verified"] == ["f0.bin"]


def test_without_validator_a_resume_with_a_digest_compares_the_last_bytes_first(served, server, tmp_path):
    dest = tmp_path / "d"
    interrupt(server, dest, "f1.bin", 100_000)
    new = os.urandom(SIZE + 1)
    (served / "f1.bin").write_bytes(new)
    download_files([f"{server.url}f1.bin#sha256={sha(new)}"], dest, **fast())
    assert (dest / "f1.bin").read_bytes() == new
    # The ranged request asked the .part's last 64 KiB again; they differed: from byte 0.
    assert server.gets("f1.bin")[-2:] == [f"bytes={100_000 - OVERLAP}-", ""]
    # Unchanged: resumed from the overlap, one request.
    (dest / "f1.bin").unlink()
    interrupt(server, dest, "f1.bin", 90_000, suffix=f"#sha256={sha(new)}")
    download_files([f"{server.url}f1.bin#sha256={sha(new)}"], dest, **fast())
    assert server.gets("f1.bin")[-1] == f"bytes={90_000 - OVERLAP}-" and (dest / "f1.bin").read_bytes() == new


def test_a_change_before_the_compared_bytes_is_caught_by_the_digest_and_fetched_again(served, server, tmp_path):
    dest = tmp_path / "d"
    old = (served / "f0.bin").read_bytes()
    interrupt(server, dest, "f0.bin", 100_000)
    new = os.urandom(1000) + old[1000:]  # the same size and the same bytes after byte 1000
    (served / "f0.bin").write_bytes(new)
    result = download_files([f"{server.url}f0.bin#sha256={sha(new)}"], dest, **fast())
    assert result["downloaded"] == ["f0.bin"] and (dest / "f0.bin").read_bytes() == new
    assert server.gets("f0.bin")[-2:] == [f"bytes={100_000 - OVERLAP}-", ""] and leftovers(dest) == []


def test_the_cache_never_stitches_a_file_without_validator(served, server, tmp_path):
    url = server.url + "net.pkl"
    server.faults["net.pkl"] = {"no_validators": True, "drop_after": 70_000}
    with pytest.raises(DownloadError, match="rerun to"):
        download(url, retries=0, **fast())
    part = cached_path(url).with_name(cached_path(url).name + ".part")
    assert part.stat().st_size == 70_000
    server.faults["net.pkl"] = {"no_validators": True}
    new = os.urandom(SIZE + 2)
    (served / "net.pkl").write_bytes(new)
    path = download(url, **fast())
    assert path.read_bytes() == new and server.gets("net.pkl")[-1] == ""
    assert read_manifest(path.parent / MANIFEST)[path.name] == sha(new)


def test_a_complete_part_without_validator_is_trusted_only_with_a_digest(served, server, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    data = (served / "f0.bin").read_bytes()
    server.faults["f0.bin"] = {"no_validators": True}
    # The size HEAD gives, no record, no digest: fetched again (the same size is not the same file).
    (dest / "f0.bin.part").write_bytes(os.urandom(SIZE))
    download_files([server.url + "f0.bin"], dest, **fast())
    assert (dest / "f0.bin").read_bytes() == data and server.gets("f0.bin") == [""]
    # With the digest: renamed without a GET, the digest checks it.
    (dest / "f0.bin").rename(dest / "f0.bin.part")
    (dest / MANIFEST).unlink()
    download_files([f"{server.url}f0.bin#sha256={sha(data)}"], dest, **fast())
    assert server.gets("f0.bin") == [""] and (dest / "f0.bin").read_bytes() == data
    # A wrong complete .part with the digest: the digest fails, fetched again from byte 0.
    (dest / "f0.bin").unlink()
    (dest / MANIFEST).unlink()
    (dest / "f0.bin.part").write_bytes(os.urandom(SIZE))
    download_files([f"{server.url}f0.bin#sha256={sha(data)}"], dest, **fast())
    assert server.gets("f0.bin") == ["", ""] and (dest / "f0.bin").read_bytes() == data
    assert leftovers(dest) == []

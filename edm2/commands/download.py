"""`edm2 download`: fetch released files or whole folders, verified and resumable (thin wrapper
over edm2.io.download)."""

import math

import click


def _finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command("download")
@click.argument("urls", nargs=-1)
@click.option("--dest", required=True, type=click.Path(file_okay=False), help="Folder to download into")
@click.option(
    "--list",
    "url_list",
    type=click.File("r"),
    default=None,
    help="File with one URL per line (instead of, or besides, URL arguments); '#' starts a comment",
)
@click.option(
    "--include",
    multiple=True,
    help="Only files whose name matches this glob (repeat for several), e.g. '*-0.050.pkl'",
)
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel transfers")
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="sha256sum-format file of known digests to verify against",
)
@click.option(
    "--retries",
    type=click.IntRange(0),
    default=8,
    show_default=True,
    help="Retries per file after a failed attempt; gives up after N+1 attempts in a row that bring the file no further",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=86400),
    callback=_finite,
    default=None,
    help="Seconds without progress (or $EDM2_DOWNLOAD_TIMEOUT)  [default: 20]",
)
@click.option(
    "--max-bytes",
    default=None,
    metavar="SIZE",
    help="Most bytes a file whose size the server does not say may have, and the most any file may have "
    "(e.g. 512M, 64G; or $EDM2_DOWNLOAD_MAX_BYTES)  [default: 64G]",
)
@click.option(
    "--min-rate",
    type=click.FloatRange(min=0),
    callback=_finite,
    default=None,
    help="Slowest average rate (bytes/s) over --rate-window a transfer may keep; 0: none "
    "(or $EDM2_DOWNLOAD_MIN_RATE)  [default: 1024]",
)
@click.option(
    "--rate-window",
    type=click.FloatRange(min=0.1, max=86400),
    callback=_finite,
    default=None,
    help="Seconds over which --min-rate is averaged (or $EDM2_DOWNLOAD_RATE_WINDOW)  [default: 60]",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0),
    callback=_finite,
    default=None,
    help="Seconds one file may take in all, retries included; 0: none (or $EDM2_DOWNLOAD_DEADLINE)  [default: 0]",
)
@click.option(
    "--link-into",
    type=click.Path(file_okay=False),
    default=None,
    help="Then hard-link the selected files (copies across file systems) into this folder, with their SHA256SUMS",
)
@click.option(
    "--move-into",
    type=click.Path(file_okay=False),
    default=None,
    help="Then move the selected files into this folder instead (DEST keeps only their digests)",
)
@click.option("--dry-run", is_flag=True, help="Only list the files that match")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar")
def download(
    urls,
    dest,
    url_list,
    include,
    jobs,
    manifest,
    retries,
    timeout,
    max_bytes,
    min_rate,
    rate_window,
    deadline,
    link_into,
    move_into,
    dry_run,
    progress,
):
    """Download files, or folders (a URL ending in '/'), into DEST, verified and resumable.

    A folder URL is read from the HTML index page the server returns (a SHA256SUMS it lists
    gives the digests of its files). Interrupted transfers continue from DEST/<name>.part when
    run again (from byte 0 if the server's file changed meanwhile); files already complete are
    verified (SHA-256 against DEST/SHA256SUMS, where the digest of every file is recorded after
    its first complete download) and not fetched again. A digest given with URL#sha256=<hex> or
    --manifest that differs from a file already in DEST is an error: nothing is deleted. Every
    URL is checked, and free space for the files' sizes, before the first transfer. Offline
    (EDM2_OFFLINE=1) or unreachable hosts fail at once; a folder already downloaded is then
    verified against DEST/SHA256SUMS without its listing.

    Bounds against a broken or hostile server: a body longer than the file's size, or (size not
    said) than --max-bytes, is refused and its .part removed; an index page or SHA256SUMS over
    16 MiB is refused; a transfer slower than --min-rate bytes/s averaged over --rate-window
    seconds, or longer than --deadline, stops with one line naming the URL and the rate. A .part
    is resumed only when the server's ETag/Last-Modified proves it is the same version, or a
    digest is known (then its last 64 KiB are compared first); else it is fetched from byte 0.

    --link-into DIR puts the selected files (and their digests) in a folder of their own that
    can be deleted and made again without downloading anything (what the workflow's
    download_raw job does: a changed --include links another selection); --move-into DIR moves
    them there instead, so DEST holds no second copy.

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 download https://nvlabs-fi-cdn.nvidia.com/edm2/raw-snapshots/edm2-img512-xs/ --dest raw/xs --include '*-0.050.pkl' --dry-run
      edm2 download https://nvlabs-fi-cdn.nvidia.com/edm2/raw-snapshots/edm2-img512-xs/ --dest raw/xs --jobs 8
      edm2 download https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.135.pkl --dest nets
    """
    from edm2.errors import ConfigError
    from edm2.io.download import check_limits, download_files, expand_urls, place_files

    limits = check_limits(max_bytes, min_rate, rate_window, deadline)  # one line before any work

    if link_into and move_into:
        raise ConfigError("give --link-into or --move-into, not both")

    sources = list(urls)
    if url_list is not None:
        from edm2.io.download.manifest import MAX_MANIFEST_BYTES

        text = url_list.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise ConfigError(
                f"--list {url_list.name}: longer than {MAX_MANIFEST_BYTES} characters; give a file of URLs"
            )
        sources += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not sources:
        raise ConfigError("give at least one URL (or --list FILE); see edm2 download --help")
    if dry_run:
        for url in expand_urls(sources, include, timeout=timeout, retries=retries, limits=limits):
            click.echo(url)
        return
    result = download_files(
        sources,
        dest,
        include=include,
        jobs=jobs,
        manifest=manifest,
        timeout=timeout,
        retries=retries,
        progress=progress,
        max_bytes=limits,
    )
    for note in result["notes"]:
        click.echo(f"{dest}: {note}")
    click.echo(
        f"{dest}: {len(result['downloaded'])} downloaded ({result['bytes'] / 2**20:.1f} MiB), "
        f"{len(result['verified'])} already there and verified"
    )
    if link_into or move_into:
        names = sorted(result["downloaded"] + result["verified"])
        place_files(dest, names, link_into or move_into, move=bool(move_into))
        click.echo(f"{link_into or move_into}: {len(names)} files {'linked' if link_into else 'moved'} from {dest}")

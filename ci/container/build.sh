#!/usr/bin/env bash
# Build the repository's Dockerfile for real, self-checks included, on a machine that cannot pull
# from Docker Hub nor run containers (CI; README "Container image").
#
#   bash ci/container/build.sh        # install podman + debootstrap if missing, make a base, build
#
# 1. Installs podman and debootstrap with apt-get when missing. If they cannot be installed (no
#    root, no apt-get, apt-get fails), it prints "SKIPPED: ..." and exits 0; with
#    EDM2_CONTAINER_REQUIRED=1 that is an error instead.
# 2. Makes the base image: Debian bookworm (python3 3.11, venv, pip; no torch) by debootstrap from
#    the Debian mirror apt uses here, imported as localhost/edm2-ci-base:bookworm. It stands in for
#    the default CUDA PyTorch base, which cannot be pulled here; the Dockerfile then installs the
#    CPU torch wheel that constraints.txt pins. Reused when it exists (EDM2_REBUILD_BASE=1: remake).
# 3. Builds the Dockerfile with BASE=that image (podman, chroot isolation, overlay or vfs
#    storage). Its last stage runs the self-checks (`edm2 --help`, `edm2 flops edm2-img512-xs`,
#    the network, sampler and post-hoc EMA tests); any failure fails the build and this script.
#    pip inside the build reaches the package index with this machine's pip settings (`pip config
#    list`: CA bundle, find-links, index URLs): they are written to a pip.conf mounted at
#    /etc/pip.conf, and every local file or folder they name is mounted read-only at the same
#    path, for the build only.
# 4. Checks the result from outside: labels, entry point, user, and that the image holds no
#    pytest, tests, sources, setuptools or compiler.
#
# Storage lives in $EDM2_CONTAINER_WORK (default /var/tmp/edm2-container), not in podman's global
# store; the built image is removed at the end unless EDM2_CONTAINER_KEEP=1 (the base is kept).
# Needs root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${EDM2_CONTAINER_WORK:-/var/tmp/edm2-container}"
SUITE="${EDM2_DEBIAN_SUITE:-bookworm}"
BASE_IMAGE="localhost/edm2-ci-base:$SUITE"
IMAGE="localhost/edm2:ci"

say() { echo "ci/container/build.sh: $*"; }
die() { echo "ci/container/build.sh: error: $*" >&2; exit 1; }
skip() {
    if [ "${EDM2_CONTAINER_REQUIRED:-0}" = 1 ]; then
        die "$* (EDM2_CONTAINER_REQUIRED=1)"
    fi
    echo "ci/container/build.sh: SKIPPED: the container image was NOT built: $*" >&2
    exit 0
}
T0=$SECONDS
lap() { say "$1 done after $((SECONDS - T0)) s"; }
# The build's output with the seconds since the start in front; without pip's notes about the
# packages a local index (find-links, file:// index) does not hold, which are expected here.
stamp() {
    local line
    while IFS= read -r line; do
        case "$line" in "WARNING: Location 'file://"*"' is ignored: it is neither a file nor a directory.") continue ;; esac
        printf '[%4d s] %s\n' "$((SECONDS - T0))" "$line"
    done
}

# --- 1. tools ------------------------------------------------------------------------------------

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "podman or debootstrap is missing and installing them needs root"
    command -v apt-get >/dev/null || skip "podman or debootstrap is missing and there is no apt-get"
    say "installing podman and debootstrap (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman debootstrap >/dev/null; }; then
        skip "apt-get could not install podman and debootstrap"
    fi
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, podman with chroot isolation)"
say "$(podman --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"
lap "tools"

# Storage driver: overlay where the kernel offers it (each build step then stores only its changes),
# else vfs (a full copy of the tree per step: slower, works everywhere). EDM2_CONTAINER_DRIVER=vfs
# or overlay forces one.
mkdir -p "$WORK"
driver="${EDM2_CONTAINER_DRIVER:-auto}"
if [ "$driver" = auto ]; then
    driver=vfs
    if podman --root "$WORK/storage-overlay" --runroot "$WORK/run-overlay" --storage-driver overlay \
        info --format '{{.Store.GraphDriverName}}' 2>/dev/null | grep -qx overlay; then
        driver=overlay
    fi
fi
PODMAN=(podman --root "$WORK/storage-$driver" --runroot "$WORK/run-$driver" --storage-driver "$driver")
say "podman storage: $driver in $WORK/storage-$driver"

# --- 2. base image -------------------------------------------------------------------------------

# The first Debian mirror apt uses (deb822 .sources or one-line .list); EDM2_DEBIAN_MIRROR overrides.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*debian\/?$/) { print $i; exit } }' "$f"
    done
}

if [ "${EDM2_REBUILD_BASE:-0}" != 1 ] && "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    say "base $BASE_IMAGE exists; reusing it (EDM2_REBUILD_BASE=1 remakes it)"
else
    mirror="${EDM2_DEBIAN_MIRROR:-$(debian_mirror | head -n 1)}"
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*; set EDM2_DEBIAN_MIRROR"
    rootfs="$WORK/rootfs-$SUITE"
    rm -rf "$rootfs"
    say "debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip "$SUITE" "$rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    say "imported $BASE_IMAGE"
fi
lap "base image"

# --- 3. build ------------------------------------------------------------------------------------

# This machine's pip settings, for pip inside the build.
PIP=""
for candidate in "$REPO/.venv/bin/pip" pip pip3; do
    if command -v "$candidate" >/dev/null 2>&1; then PIP="$candidate"; break; fi
done
conf="$WORK/pip.conf"
mounts=()
{
    echo "[global]"
    if [ -n "$PIP" ]; then
        # Lines like  global.cert='/etc/ssl/certs/ca-certificates.crt'  or  :env:.find-links='/opt/wheels'
        "$PIP" config list 2>/dev/null | sed -n "s/^[^.]*\.\(cert\|client-cert\|find-links\|index-url\|extra-index-url\|trusted-host\|default-timeout\|timeout\)='\(.*\)'$/\1 \2/p" |
            awk '{ key = $1; $1 = ""; sub(/^ /, "")
                   if (key ~ /^(find-links|extra-index-url|trusted-host)$/) {   # lists: every value once
                       n = split($0, items, " ")
                       for (i = 1; i <= n; i++) if (!((key, items[i]) in seen)) {
                           seen[key, items[i]] = 1; value[key] = (value[key] == "" ? "" : value[key] " ") items[i] }
                   } else value[key] = $0                                       # single values: last wins
                 }
                 END { for (k in value) print k " = " value[k] }'
    fi
} >"$conf"
say "pip settings for the build ($conf):"
sed 's/^/    /' "$conf"
# Every local path those settings name (CA bundle, find-links folders, file:// indexes) is mounted
# at the same path. A file's whole folder is mounted (the CA bundle may link into it), and a local
# index's root (its pages under simple/ link to files beside it).
for value in $(sed -n 's/^[a-z-]* = //p' "$conf"); do
    path="${value#file://}"
    path="${path%/}"
    case "$path" in /*) ;; *) continue ;; esac
    [ -e "$path" ] || continue
    [ -d "$path" ] || path="$(dirname "$path")"
    [ "$(basename "$path")" != simple ] || path="$(dirname "$path")"
    mounts+=(--volume "$path:$path:ro")
done
mounts+=(--volume "$conf:/etc/pip.conf:ro")

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1)"
source_url="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
revision="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)"
say "building $IMAGE from $REPO/Dockerfile (BASE=$BASE_IMAGE, VERSION=$version, REVISION=${revision:-unknown})"
# --layers=false: one commit per stage, not one per instruction (fewer copies, above all with vfs).
"${PODMAN[@]}" build --isolation chroot --layers=false --pull=never \
    --build-arg BASE="$BASE_IMAGE" --build-arg VERSION="$version" \
    --build-arg SOURCE="$source_url" --build-arg REVISION="$revision" \
    "${mounts[@]}" -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" 2>&1 | stamp
lap "build with self-checks"

# --- 4. what the image holds ---------------------------------------------------------------------

inspect() { "${PODMAN[@]}" image inspect --format "$1" "$IMAGE"; }
[ "$(inspect '{{index .Labels "org.opencontainers.image.version"}}')" = "$version" ] || die "version label is not $version"
[ "$(inspect '{{index .Labels "org.opencontainers.image.licenses"}}')" = "BSD-3-Clause" ] || die "licence label missing"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["edm2"]' ] || die "entry point is not edm2"
[ "$(inspect '{{.Config.User}}')" = edm2 ] || die "the image does not run as the non-root user edm2"
root="$("${PODMAN[@]}" image mount "$IMAGE")"
trap '"${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1 || true' EXIT
# (Empty folders and files may remain where the build mounted things: mount points.)
leftover="$(find "$root/opt/selftest" "$root/src" "$root/tmp" "$root/home/edm2/.cache" -type f -size +0 2>/dev/null | head -n 5 || true)"
[ -z "$leftover" ] || die "the image holds self-check or build files: ${leftover//$root/}"
if compgen -G "$root/opt/edm2/lib/python3*/site-packages/setuptools" >/dev/null ||
    compgen -G "$root/opt/edm2/lib/python3*/site-packages/_pytest" >/dev/null; then
    die "the image's environment holds setuptools or pytest"
fi
for tool in gcc cc g++ make; do
    [ ! -x "$root/usr/bin/$tool" ] || die "the image holds the build tool /usr/bin/$tool"
done
[ -s "$root/opt/edm2/environment.txt" ] || die "the image lacks /opt/edm2/environment.txt"
say "image: $(inspect '{{.Size}}') bytes; $(grep -c . "$root/opt/edm2/environment.txt") packages in environment.txt;" \
    "torch $(sed -n 's/^torch==//p' "$root/opt/edm2/environment.txt")"
"${PODMAN[@]}" image unmount "$IMAGE" >/dev/null
trap - EXIT

if [ "${EDM2_CONTAINER_KEEP:-0}" != 1 ]; then
    "${PODMAN[@]}" rmi "$IMAGE" >/dev/null
    "${PODMAN[@]}" image prune --force >/dev/null
fi
lap "checks"
say "OK: the image builds from the Dockerfile and its self-checks pass"

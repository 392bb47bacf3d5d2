#!/usr/bin/env bash
# Make a local stand-in for the registry base image python:3.11-slim-bookworm, for
# machines that reach Debian's and PyPI's package servers but no container registry
# (this project's CI). It is Debian bookworm (debootstrap, minbase) plus Debian's own
# python3 (3.11 on bookworm), python3-venv and ca-certificates: the same Debian release
# and the same Python minor version as the registry image; the Dockerfile's venv at
# /opt/venv makes both bases look alike to everything after it.
#
#   deploy/container/local-base.sh [IMAGE]     (root; needs buildah and debootstrap)
#
# Idempotent and cached: an existing IMAGE in buildah's storage is kept; the debootstrap
# tree is kept as build/bookworm-rootfs.tar, so a second image (or a rebuild after
# `buildah rmi`) takes seconds instead of minutes.
set -euo pipefail

IMAGE=${1:-localhost/kpms-base:bookworm}
CACHE=${KPMS_BASE_CACHE:-build/bookworm-rootfs.tar}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "local-base.sh: $IMAGE already exists"
    exit 0
fi
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "local-base.sh: needs $tool (.ci/setup-system.sh installs it)" >&2; exit 2; }
done

mkdir -p "$(dirname "$CACHE")"
if [ ! -s "$CACHE" ]; then
    root=$(mktemp -d "${CACHE%.tar}.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "local-base.sh: debootstrap bookworm into $root (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar --numeric-owner -C "$root" -cf "$CACHE.part" .
    mv "$CACHE.part" "$CACHE"
fi

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
tar --numeric-owner -C "$mnt" -xf "$CACHE"
# the same package sources as the registry image: bookworm, -updates and -security
rm -f "$mnt/etc/apt/sources.list"
cat >"$mnt/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
buildah umount "$ctr" >/dev/null
buildah config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label org.opencontainers.image.description="local debootstrap stand-in for python:3.11-slim-bookworm" \
    "$ctr"
buildah commit --rm --quiet "$ctr" "$IMAGE" >/dev/null
echo "local-base.sh: made $IMAGE"

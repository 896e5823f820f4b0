#!/usr/bin/env bash
# Build, from Debian's packages, a local stand-in for the Dockerfile's base image
# (python:3.11-slim-bookworm: Debian bookworm with Python 3.11, pip and venv) and tag it with that
# name, for machines that reach Debian's package mirror but no container registry. The Dockerfile is
# unchanged: with a registry, it pulls the real base instead.
#
#   scripts/build_base_image.sh            # needs root, debootstrap and podman (apt-get install them)
#
# STORAGE_DRIVER (default vfs) and MIRROR (default http://deb.debian.org/debian) can be set.
set -euo pipefail
TAG=docker.io/library/python:3.11-slim-bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
ROOTFS=$(mktemp -d /var/tmp/darkroom-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

started=$(date +%s)
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,netbase,tzdata \
  bookworm "$ROOTFS" "$MIRROR"
# As the official slim images: no package lists, caches or docs to carry.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/*
chmod 755 "$ROOTFS"  # mktemp made it 0700: "/" of the image must let every user through
tar -C "$ROOTFS" --numeric-owner -c . | podman --storage-driver "$STORAGE_DRIVER" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG"
echo "base image $TAG built from $MIRROR in $(( $(date +%s) - started )) s"

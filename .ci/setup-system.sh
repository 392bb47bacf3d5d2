#!/usr/bin/env bash
# System packages for the container and cluster tests (tests/container/test_container.py,
# tests/cluster/test_slurm.py). Idempotent; runs non-interactively as root (CI calls it from
# .ci/run before the tests). Installs:
#   buildah + debootstrap  build the real Dockerfile on a local Debian bookworm base
#                          (no Docker engine and no container registry here)
#   slurmctld/slurmd/munge a single-node Slurm cluster (deploy/slurm/ci-cluster.sh configures
#                          and starts it; tests/cluster/test_slurm.py runs that script in CI)
#   chromium + its driver  headless Chromium, which tests/integration/test_report.py drives
#                          (selenium) to open a real run's report.html
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system.sh: must run as root (apt-get)" >&2
    exit 2
fi

PKGS=(buildah debootstrap uidmap slirp4netns fuse-overlayfs
      slurmctld slurmd slurm-client munge
      chromium chromium-driver)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-system.sh: installing ${missing[*]}"
    apt-get update -q
    # policy-rc.d: never let a package's maintainer script start a daemon here
    # (ci-cluster.sh starts slurm and munge itself, with its own config)
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
else
    echo "setup-system.sh: system packages already installed"
fi

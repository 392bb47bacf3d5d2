#!/bin/sh
# The image's command: `kpms-job-entry MANIFEST` (or `run|validate|plan ...`), started by
# tini as PID 1. Makes sure every cache a library writes goes somewhere writable for any
# UID on a read-only image (Kubernetes readOnlyRootFilesystem, Apptainer's SIF), then
# execs kpms-job. Defaults live under $TMPDIR (or /tmp) in a folder per UID, so users who
# share a host's /tmp (Apptainer binds it) never collide; an explicit setting wins.
# JAX_COMPILATION_CACHE_DIR is left alone: unset, the job keeps the compiled programs in the
# project dir (<project_dir>/.kpms-job/jax-cache), so a resumed or retried job loads them
# instead of compiling again; under /tmp they would be gone with the container.
set -eu
base="${TMPDIR:-/tmp}/kpms-job-$(id -u)"
: "${MPLCONFIGDIR:=$base/matplotlib}"
: "${NUMBA_CACHE_DIR:=$base/numba}"
: "${XDG_CACHE_HOME:=$base/cache}"
export MPLCONFIGDIR NUMBA_CACHE_DIR XDG_CACHE_HOME
if [ -z "${HOME:-}" ] || [ "$HOME" = / ] || ! [ -w "$HOME" ]; then
    HOME="$base"
    export HOME
fi
mkdir -p "$MPLCONFIGDIR" "$NUMBA_CACHE_DIR" "$XDG_CACHE_HOME" "$HOME" 2>/dev/null || true
exec /opt/venv/bin/python /opt/kpms-job/entrypoint.py "$@"

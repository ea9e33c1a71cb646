# cache.sh — sourced by the image scripts: POPVMM_CACHE, the directory outside
# the work tree where downloaded packages, built kernels and the lab image are
# kept by input hash, so a fresh clone on the same machine (CI) reuses them.
# Default: $XDG_CACHE_HOME/popvmm, else ~/.cache/popvmm.
: "${POPVMM_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/popvmm}"
export POPVMM_CACHE
mkdir -p "$POPVMM_CACHE"

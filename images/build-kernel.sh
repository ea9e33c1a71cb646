#!/usr/bin/env bash
# build-kernel.sh FLAVOUR — build the FLAVOUR (full|light) guest kernel into
# images/out/FLAVOUR/{bzImage,vmlinux}, from Debian's pinned linux-source,
# tinyconfig plus images/config/{common,FLAVOUR}.config, and the patches in
# images/patches. The output is keyed by a hash of all of those inputs and of
# this script: with an unchanged key nothing is rebuilt.
set -euo pipefail
flavour=${1:?usage: build-kernel.sh full|light}
here=$(cd "$(dirname "$0")" && pwd)
cfg="$here/config/$flavour.config"
[ -f "$cfg" ] || { echo "build-kernel: no $cfg (flavours: full, light)" >&2; exit 2; }

out="$here/out/$flavour"
obj="$here/build/kernel-$flavour"
. "$here/kernel-source.sh"
key=$(kernel_key "$flavour")
if [ -f "$out/.key" ] && [ "$(cat "$out/.key")" = "$key" ] && [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ]; then
  echo "==> $flavour kernel is up to date ($out)"
  exit 0
fi
# A kernel built from the same inputs by any clone on this machine is in
# the cache outside the work tree (images/cache.sh): reuse it.
. "$here/cache.sh"
cached="$POPVMM_CACHE/kernel/$flavour-$key"
if [ -f "$cached/bzImage" ] && [ -f "$cached/vmlinux" ] && [ -f "$cached/Module.symvers" ]; then
  mkdir -p "$out"
  cp "$cached/bzImage" "$cached/vmlinux" "$cached/config" "$cached/Module.symvers" "$out/"
  echo "$key" > "$out/.key"
  echo "==> $flavour kernel from the cache ($cached)"
  exit 0
fi
echo "==> $flavour kernel: not built for these inputs yet, and not in the cache ($POPVMM_CACHE/kernel)."
echo "    Compiling it from Debian's Linux source takes 10-30 minutes on 2 cores (light about 13, full about 29"
echo "    measured on 2 cores), once: every later build, in any clone, copies it from the cache in a second."
echo "    Disk: about 1.5 GB for the source tree and 130 MB per flavour's objects in images/build (docs/kernel-images.md)."

unpack_source

echo "==> configure $flavour kernel (tinyconfig + common.config + $flavour.config)"
rm -rf "$obj"
mkdir -p "$obj"
make -s -C "$src" O="$obj" tinyconfig >/dev/null
KCONFIG_CONFIG="$obj/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" \
  "$obj/.config" "$here/config/common.config" "$cfg" >"$obj/merge.log"
make -s -C "$src" O="$obj" olddefconfig >/dev/null
# Every option the fragments ask for must have survived olddefconfig; one
# that did not has an unmet dependency and would silently be missing.
missing=0
for frag in "$here/config/common.config" "$cfg"; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) want="$line" ;;
      "# CONFIG_"*" is not set") want="$line" ;;
      *) continue ;;
    esac
    opt=${want#\# }; opt=${opt%%[= ]*}
    have=$(grep -E "^(# )?$opt[= ]" "$obj/.config" || echo "# $opt is not set")
    if [ "$have" != "$want" ]; then
      echo "build-kernel: $(basename "$frag"): want '$want', got '$have'" >&2
      missing=1
    fi
  done < "$frag"
done
[ "$missing" = 0 ] || { echo "build-kernel: fix the fragments above (an option's dependency is not enabled)" >&2; exit 1; }

jobs=$(nproc)
echo "==> compile $flavour kernel with $jobs jobs (minutes; log in $obj/build.log)"
start=$(date +%s)
# "modules" too: with CONFIG_MODULES it writes Module.symvers, which a module
# built outside the tree against this kernel needs (issue 23).
if ! make -C "$src" O="$obj" -j"$jobs" bzImage modules >"$obj/build.log" 2>&1 & then :; fi
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 30 &
  wait $! || true
  kill -0 "$pid" 2>/dev/null && echo "    ... still compiling $flavour: $(grep -cE '^\s+(CC|AS|LD|AR)' "$obj/build.log" || true) objects, $(( $(date +%s) - start ))s"
done
if ! wait "$pid"; then
  tail -30 "$obj/build.log" >&2
  echo "build-kernel: compile failed; full log in $obj/build.log" >&2
  exit 1
fi
mkdir -p "$out"
cp "$obj/arch/x86/boot/bzImage" "$out/bzImage"
cp "$obj/vmlinux" "$out/vmlinux"
cp "$obj/.config" "$out/config"
cp "$obj/Module.symvers" "$out/Module.symvers"
echo "$key" > "$out/.key"
mkdir -p "$cached.tmp"
cp "$out/bzImage" "$out/vmlinux" "$out/config" "$out/Module.symvers" "$cached.tmp/"
rm -rf "$cached" && mv "$cached.tmp" "$cached"
# The module build kit from this build's trees, into the cache beside it.
"$here/build-modkit.sh" "$flavour"
echo "==> $flavour kernel built in $(( $(date +%s) - start ))s: $(stat -c %s "$out/bzImage") bytes bzImage"

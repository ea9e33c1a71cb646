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

src_pkg=linux-source-6.1
out="$here/out/$flavour"
obj="$here/build/kernel-$flavour"
src="$here/build/src/$src_pkg"

# The build recipe's version: bump it when a change to this script changes
# what a build produces (the make invocation, the merge of the fragments),
# not for changes to what it prints, so a reworded message does not cost
# every clone a 10-30 minute rebuild.
recipe=2
key=$( { grep "^$src_pkg " "$here/packages.lock"; cat "$here"/patches/*.patch "$here/config/common.config" "$cfg"; echo "recipe $recipe"; } | sha256sum | cut -d' ' -f1)
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

"$here/fetch.sh" "$src_pkg"

# One patched source tree serves both flavours; it is unpacked anew when
# the source package or the patches change.
src_key=$( { grep "^$src_pkg " "$here/packages.lock"; cat "$here"/patches/*.patch; } | sha256sum | cut -d' ' -f1)
if [ ! -f "$src/.popvmm-src" ] || [ "$(cat "$src/.popvmm-src")" != "$src_key" ]; then
  echo "==> unpack $src_pkg source"
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  tar -C "$(dirname "$src")" -xf "$here/build/debs/$src_pkg/usr/src/$src_pkg.tar.xz"
  for p in "$here"/patches/*.patch; do
    echo "==> patch: $(basename "$p")"
    patch -s -p1 -d "$src" < "$p"
  done
  echo "$src_key" > "$src/.popvmm-src"
fi

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
echo "==> $flavour kernel built in $(( $(date +%s) - start ))s: $(stat -c %s "$out/bzImage") bytes bzImage"

#!/usr/bin/env bash
# build-modkit.sh FLAVOUR — the module build kit of the FLAVOUR kernel, into
# images/out/FLAVOUR/modkit.tar.gz: what `make M=DIR modules` needs to build
# a module outside the tree against that kernel (the source tree's
# Makefiles, include/ and scripts/, the build's generated headers, host
# programs, objtool, .config and Module.symvers: the list Linux's own
# scripts/package/builddeb puts in a linux-headers package). It is kept in
# the cache beside the kernel, under the kernel's key, so a clone that takes
# the kernel from the cache builds modules without the kernel's trees. A
# kernel cached without a kit gets one from `make modules_prepare` over the
# source with the cached .config (a minute or two, no kernel rebuild).
# MODKIT_FROM=prepare takes that path even when the build tree is here.
set -euo pipefail
flavour=${1:?usage: build-modkit.sh full|light}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/kernel-source.sh"
. "$here/cache.sh"
key=$(kernel_key "$flavour")
out="$here/out/$flavour"
obj="$here/build/kernel-$flavour"
kit="$out/modkit.tar.gz"
cached="$POPVMM_CACHE/kernel/$flavour-$key"
if [ "$(cat "$out/.key" 2>/dev/null)" != "$key" ] || [ ! -f "$out/config" ] || [ ! -f "$out/Module.symvers" ]; then
  echo "build-modkit: the $flavour kernel is not built for these inputs (images/build-kernel.sh $flavour)" >&2
  exit 1
fi
if [ -f "$out/.modkit-key" ] && [ "$(cat "$out/.modkit-key")" = "$key" ] && [ -f "$kit" ]; then
  echo "==> $flavour module build kit is up to date"
  exit 0
fi
if [ -f "$cached/modkit.tar.gz" ] && [ "${MODKIT_FROM:-}" != prepare ]; then
  cp "$cached/modkit.tar.gz" "$kit"
  echo "$key" > "$out/.modkit-key"
  echo "==> $flavour module build kit from the cache ($cached)"
  exit 0
fi

unpack_source
if [ "${MODKIT_FROM:-}" = prepare ] || [ ! -f "$obj/.config" ] || ! cmp -s "$obj/.config" "$out/config" ||
  [ ! -x "$obj/scripts/mod/modpost" ]; then
  obj="$here/build/modkit-prepare-$flavour"
  echo "==> $flavour module build kit: make modules_prepare with the cached .config (no kernel rebuild; log in $obj/build.log)"
  rm -rf "$obj"
  mkdir -p "$obj"
  cp "$out/config" "$obj/.config"
  if ! make -C "$src" O="$obj" -j"$(nproc)" olddefconfig modules_prepare >"$obj/build.log" 2>&1; then
    tail -20 "$obj/build.log" >&2
    echo "build-modkit: make modules_prepare failed; log in $obj/build.log" >&2
    exit 1
  fi
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dest="$stage/modkit"
mkdir -p "$dest"
(
  cd "$src"
  find . arch/x86 -maxdepth 1 -name 'Makefile*'
  find include scripts -type f -o -type l
  find arch/x86 -name Kbuild.platforms -o -name Platform
  find $(find arch/x86 -name include -o -name scripts -type d) -type f
) >"$stage/src.list"
(
  cd "$obj"
  if grep -q '^CONFIG_OBJTOOL=y' .config; then echo tools/objtool/objtool; fi
  find arch/x86/include include scripts -type f ! -name '*.o' ! -name '.*.cmd'
) >"$stage/obj.list"
tar -C "$src" -cf - -T "$stage/src.list" | tar -C "$dest" -xf -
tar -C "$obj" -cf - -T "$stage/obj.list" | tar -C "$dest" -xf -
cp "$out/config" "$dest/.config"
cp "$out/Module.symvers" "$dest/Module.symvers"
tar -C "$stage" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -czf "$kit.tmp" modkit
mv "$kit.tmp" "$kit"
mkdir -p "$cached"
cp "$kit" "$cached/modkit.tar.gz.tmp" && mv "$cached/modkit.tar.gz.tmp" "$cached/modkit.tar.gz"
echo "$key" > "$out/.modkit-key"
echo "==> $flavour module build kit: $(stat -c %s "$kit") bytes ($kit, cached)"

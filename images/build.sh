#!/usr/bin/env bash
# build.sh [kernels|initramfs|all] — build what is missing of images/out:
# each flavour's kernel (build-kernel.sh), the window network's module
# against it (build-module.sh, with the kernel's module build kit) and the
# initramfs (mkinitramfs) carrying the module, each keyed by a hash of its
# inputs, so an unchanged input set is a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
what=${1:-all}
flavours=(light full)
initramfs_pkgs=(busybox-static dropbear-bin libc6 libcrypt1 zlib1g libtomcrypt1 libtommath1 libgmp10)

build_initramfs() {
  "$here/fetch.sh" "${initramfs_pkgs[@]}"
  # The guest agent goes into every flavour: a static, reproducible build.
  agent="$here/build/popagent"
  (cd "$top" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags=-s -o "$agent" ./cmd/popagent)
  for f in "${flavours[@]}"; do
    out="$here/out/$f"
    agent_flag=(-agent "$agent")
    # The window network's module, once the flavour's kernel is built.
    module=
    if [ -f "$out/.key" ]; then
      "$here/build-module.sh" "$f"
      module="$out/winnet.ko"
      agent_flag+=(-module "$module")
    else
      echo "==> $f kernel not built yet: its initramfs goes without the window network's module"
    fi
    key=$( { for p in "${initramfs_pkgs[@]}"; do grep "^$p " "$here/packages.lock"; done
             cat "$here"/initramfs/* "$here"/mkinitramfs/*.go "$top"/initramfs/*.go "$top/go.sum"; echo "$f"
             cat "$agent"; [ -z "$module" ] || cat "$module"; } | sha256sum | cut -d" " -f1)
    if [ -f "$out/.initramfs-key" ] && [ "$(cat "$out/.initramfs-key")" = "$key" ] && [ -f "$out/initramfs.cpio" ]; then
      echo "==> $f initramfs is up to date"
      continue
    fi
    echo "==> build $f initramfs"
    mkdir -p "$out"
    (cd "$top" && go run ./images/mkinitramfs -flavour "$f" -debs "$here/build/debs" -src "$here/initramfs" "${agent_flag[@]}" -o "$out/initramfs.cpio")
    echo "$key" > "$out/.initramfs-key"
    echo "    $(stat -c %s "$out/initramfs.cpio") bytes, sha256 $(sha256sum "$out/initramfs.cpio" | cut -c1-16)…"
  done
}

build_kernels() {
  for f in "${flavours[@]}"; do
    "$here/build-kernel.sh" "$f"
  done
}

case "$what" in
  initramfs) build_initramfs ;;
  kernels) build_kernels ;;
  all) build_kernels; build_initramfs ;;
  *) echo "usage: build.sh [kernels|initramfs|all]" >&2; exit 2 ;;
esac

# kernel-source.sh — sourced by build-kernel.sh and build-modkit.sh: the
# pinned kernel source package, a flavour's build key, and the patched
# source tree both build from.
src_pkg=linux-source-6.1
src="$here/build/src/$src_pkg"

# The build recipe's version: bump it when a change to build-kernel.sh
# changes what a build produces (the make invocation, the merge of the
# fragments), not for changes to what it prints, so a reworded message does
# not cost every clone a 10-30 minute rebuild.
recipe=2

# kernel_key FLAVOUR: the hash of everything a flavour's kernel is built
# from; the cache keeps the kernel, and its module build kit, under it.
kernel_key() {
  { grep "^$src_pkg " "$here/packages.lock"; cat "$here"/patches/*.patch "$here/config/common.config" "$here/config/$1.config"; echo "recipe $recipe"; } |
    sha256sum | cut -d' ' -f1
}

# unpack_source: the patched source tree, unpacked anew when the source
# package or the patches change.
unpack_source() {
  "$here/fetch.sh" "$src_pkg"
  local src_key
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
}

#!/usr/bin/env bash
# build-rootfs.sh — build the Debian 12 root image popvmm's kernels can boot
# into (`root = "…/images/out/debian.ext4"` in cluster.toml): mmdebstrap
# installs bookworm's minbase and the packages in images/rootfs/packages into
# a directory, images/rootfs/customize adjusts it, and `mkfs.ext4 -d` makes
# an ext4 image of it. Writes images/out/debian.ext4 and, beside it,
# images/out/debian.manifest (every package and version it holds).
#
# The image is keyed by a hash of its recipe (the package list, the customize
# hook, the suite, the recipe version below) and kept outside the work tree
# in $POPVMM_CACHE/rootfs/ (images/cache.sh): an unchanged recipe is a no-op,
# and another clone on the machine takes the image from the cache. The .deb
# files are kept in $POPVMM_CACHE/rootfs-debs, so a rebuild downloads only
# what changed in the archive. ROOTFS_REFRESH=1 rebuilds from today's archive
# (security updates) even when the recipe is unchanged.
#
# Needs root (mmdebstrap's root mode; mkfs.ext4 -d keeps the tree's owners).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cache.sh"

# The suite is pinned by name: bookworm with its point-release updates and
# security fixes, from the mirror apt uses on this host unless told
# otherwise. The manifest says which versions a given image holds.
suite=bookworm
mirror=${POPVMM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${POPVMM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Every timestamp mmdebstrap and mke2fs write (2025-01-01T00:00:00Z), and a
# fixed file-system UUID and directory hash seed: the same packages give the
# same files, dated the same.
epoch=1735689600
uuid=9b56b154-613b-4164-9df0-4cf26c236626
# Bump when a change here changes what a build produces.
recipe=3

out="$here/out"
img="$out/debian.ext4"
manifest="$out/debian.manifest"
debs="$POPVMM_CACHE/rootfs-debs"
# The tree is built outside the work tree: while mmdebstrap runs, its /proc,
# /sys and /dev are the host's, mounted, and nothing that walks the clone
# (go ./..., grep -r, rm -rf images/build) may wander into them.
work="$POPVMM_CACHE/rootfs/work"

pkgs=$(sed -e 's/#.*//' "$here/rootfs/packages" | tr -s ' \t\n' '\n' | sed '/^$/d' | sort -u)
[ -n "$pkgs" ] || { echo "build-rootfs: $here/rootfs/packages names no package" >&2; exit 1; }
key=$( { echo "recipe $recipe suite $suite epoch $epoch uuid $uuid"; echo "$pkgs"; cat "$here/rootfs/customize"; } | sha256sum | cut -c1-16)
cached="$POPVMM_CACHE/rootfs/debian-$key"

# place copies the cached image into images/out: a hard link where the cache
# is on the same file system (the image is only ever attached read-only),
# else a copy.
place() {
  mkdir -p "$out"
  rm -f "$img" "$manifest"
  ln "$cached/debian.ext4" "$img" 2>/dev/null || cp "$cached/debian.ext4" "$img"
  cp "$cached/debian.manifest" "$manifest"
  echo "$key" > "$out/.debian-key"
}

if [ -z "${ROOTFS_REFRESH:-}" ]; then
  if [ -f "$out/.debian-key" ] && [ "$(cat "$out/.debian-key")" = "$key" ] && [ -f "$img" ] && [ -f "$manifest" ]; then
    echo "==> Debian root image is up to date ($img)"
    exit 0
  fi
  if [ -f "$cached/debian.ext4" ] && [ -f "$cached/debian.manifest" ]; then
    place
    echo "==> Debian root image from the cache ($cached)"
    exit 0
  fi
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "build-rootfs: must run as root (mmdebstrap's root mode, and mkfs.ext4 -d keeps the tree's file owners)" >&2
  exit 1
fi
for tool in mmdebstrap mkfs.ext4 debugfs e2fsck; do
  command -v "$tool" >/dev/null || { echo "build-rootfs: $tool not found (make deps installs it)" >&2; exit 1; }
done

echo "==> Debian root image: $suite minbase + $(echo "$pkgs" | wc -l) packages (images/rootfs/packages) with mmdebstrap"
echo "    a few minutes; downloads about 100 MB the first time (kept in $debs)"
start=$(date +%s)
# --one-file-system: never through a mount a failed mmdebstrap left behind.
rm -rf --one-file-system "$work"
mkdir -p "$work" "$debs"
trap 'rm -rf --one-file-system "$work"' EXIT
tree="$work/tree"

# path-exclude: no manual pages, info, translations or documentation beyond
# the copyright files; the image is for running programs, and every MiB of it
# is read by every kernel that boots it.
SOURCE_DATE_EPOCH=$epoch mmdebstrap \
  --mode=root --variant=minbase --format=directory \
  --include="$(echo "$pkgs" | paste -sd,)" \
  --aptopt='APT::Install-Recommends "false"' \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
  --setup-hook="sync-in $debs /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $debs" \
  --customize-hook="$here/rootfs/customize \"\$1\"" \
  "$suite" "$tree" \
  "deb $mirror $suite main" \
  "deb $mirror $suite-updates main" \
  "deb $security $suite-security main"

dpkg-query --admindir="$tree/var/lib/dpkg" -W -f='${Package}\t${Version}\t${Architecture}\n' | LC_ALL=C sort > "$work/debian.manifest"
rm -f "$tree/var/cache/apt/archives/"*.deb
# Files written during the build (maintainer scripts, the customize hook)
# carry today's date; every file gets at most SOURCE_DATE_EPOCH's.
find "$tree" -xdev -newermt "@$epoch" -print0 | xargs -0r touch --no-dereference --date="@$epoch"

# Size: what the tree uses in 4 KiB blocks, 8% for the file system's own
# metadata, 16 MiB spare; one inode a file and 2048 spare. No journal and
# no reserved blocks: the image is only ever attached read-only.
used_kib=$(du -s --block-size=4K "$tree" | cut -f1)
used_kib=$(( used_kib * 4 ))
files=$(find "$tree" -xdev | wc -l)
size_mib=$(( used_kib * 108 / 100 / 1024 + 16 ))
echo "==> mkfs.ext4 -d: $(( used_kib / 1024 )) MiB in $files files, into a $size_mib MiB image"
if ! E2FSPROGS_FAKE_TIME=$epoch SOURCE_DATE_EPOCH=$epoch mkfs.ext4 -q -F -t ext4 -b 4096 -m 0 -O ^has_journal \
  -N $(( files + 2048 )) -L popvmm-debian -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
  -d "$tree" "$work/debian.ext4" "${size_mib}M" 2>&1 | { grep -v '^Creating regular file' || true; }; then
  echo "build-rootfs: mkfs.ext4 -d $tree failed" >&2
  exit 1
fi
# mkfs.ext4 -d copies each file's ctime and atime from the tree: the build's
# own times (no program sets a ctime, and reading a file moves its atime).
# debugfs sets both to SOURCE_DATE_EPOCH, so that the same packages give the
# same image, byte for byte.
if (cd "$tree" && find . -xdev -mindepth 1 -printf '%P\n') | grep -q '"'; then
  echo "build-rootfs: a file name in the tree holds a double quote, which debugfs's command files cannot carry" >&2
  exit 1
fi
hex=$(printf '0x%x' "$epoch")
{ printf 'sif / ctime %s\nsif / atime %s\n' "$hex" "$hex"
  (cd "$tree" && find . -xdev -mindepth 1 -printf '%P\n') | while IFS= read -r p; do
    printf 'sif "/%s" ctime %s\nsif "/%s" atime %s\n' "$p" "$hex" "$p" "$hex"
  done
} > "$work/times.debugfs"
E2FSPROGS_FAKE_TIME=$epoch debugfs -w -f "$work/times.debugfs" "$work/debian.ext4" >/dev/null 2>"$work/debugfs.log"
if grep -v '^debugfs [0-9.]* (' "$work/debugfs.log" | grep -q .; then
  cat "$work/debugfs.log" >&2
  echo "build-rootfs: debugfs could not set the file times in $work/debian.ext4" >&2
  exit 1
fi
e2fsck -fn "$work/debian.ext4" >"$work/e2fsck.log" 2>&1 || { cat "$work/e2fsck.log" >&2; echo "build-rootfs: e2fsck finds $work/debian.ext4 damaged" >&2; exit 1; }
chmod 0444 "$work/debian.ext4"

mkdir -p "$POPVMM_CACHE/rootfs"
rm -rf "$cached.tmp"
mkdir -p "$cached.tmp"
mv "$work/debian.ext4" "$work/debian.manifest" "$cached.tmp/"
rm -rf "$cached" && mv "$cached.tmp" "$cached"
place
echo "==> Debian root image built in $(( $(date +%s) - start ))s: $img, $(( $(stat -c %s "$img") / 1048576 )) MiB, $(wc -l < "$manifest") packages (debian.manifest)"

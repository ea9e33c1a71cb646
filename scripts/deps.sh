#!/usr/bin/env bash
# deps.sh — installs what building and testing popvmm and its guest images
# needs on Debian 12, as root. Go itself must already be installed
# (Debian's golang is too old for go.mod's toolchain); everything else comes
# from Debian's archive.
set -euo pipefail

need_go=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$(dirname "$0")/../go.mod")
if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go $need_go or newer is needed and not on PATH (install it to /usr/local/go)" >&2
  exit 1
fi
echo "==> deps: $(go version) (go.mod wants $need_go)"

# gcc: the race detector needs cgo. git: version stamping. iproute2: later
# network tests. xz-utils: the kernel source tarball. openssh-client: popvmm ssh.
pkgs=(gcc make git iproute2 xz-utils openssh-client)
# Kernel build (images/build-kernel.sh) and QEMU, the reference VMM that
# the image tests and benchmarks boot the kernels with.
pkgs+=(build-essential flex bison bc libelf-dev patch qemu-system-x86)
# The Debian root image (images/build-rootfs.sh, make rootfs) and popvmm disk
# pack: mmdebstrap installs Debian into a directory, e2fsprogs' mkfs.ext4 -d
# makes an ext4 image of it.
pkgs+=(mmdebstrap e2fsprogs)
# MPICH's compiler and headers for the MPI programs (images/mpi, make mpi),
# pinned: the release the root image's mpich is (images/out/debian.manifest).
pinned=(libmpich-dev=4.0.2-3+b1 mpich=4.0.2-3+b1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for p in "${pinned[@]}"; do
  [ "$(dpkg-query -W -f='${Status} ${Version}' "${p%%=*}" 2>/dev/null)" = "install ok installed ${p#*=}" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "==> deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
echo "==> deps: Go modules"
go mod download
echo "==> deps: done"

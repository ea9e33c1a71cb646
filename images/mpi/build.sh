#!/usr/bin/env bash
# build.sh — the project's MPI programs (hello, pingpong, allreduce: C, this
# directory) built on the host against Debian's MPICH, the release the root
# image carries, and packed into images/out/mpi.ext4 (popvmm disk pack): a
# disk to attach read-only to every kernel of an MPI job (docs/mpi.md).
# Keyed by a hash of the sources, this script and MPICH's version; an
# unchanged key is a no-op.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=$top/images/out
popvmm=${POPVMM:-$top/bin/popvmm}
progs=(hello pingpong allreduce)
# Plain C programs for the tests, no MPI: winnet-scribble, the window
# network's hostile writer (TestKVMWinnetMPI).
tools=(winnet-scribble)

command -v mpicc.mpich >/dev/null || { echo "mpi: mpicc.mpich missing (make deps installs libmpich-dev)" >&2; exit 1; }
have=$(dpkg-query -W -f='${Version}' libmpich-dev)
# The image's MPICH is the one the programs load at run time: the same
# release, or they may not run there.
if [ -f "$out/debian.manifest" ]; then
  want=$(awk '$1 == "libmpich12" {print $2}' "$out/debian.manifest")
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    echo "mpi: the host's libmpich-dev is $have, the root image's libmpich12 $want (make deps; make rootfs)" >&2
    exit 1
  fi
fi
key=$( { cat "$0"; for p in "${progs[@]}" "${tools[@]}"; do cat "$here/$p.c"; done; echo "$have"; } | sha256sum | cut -c1-16)
if [ -f "$out/.mpi-key" ] && [ "$(cat "$out/.mpi-key")" = "$key" ] && [ -f "$out/mpi.ext4" ]; then
  echo "==> mpi: images/out/mpi.ext4 is up to date ($key)"
  exit 0
fi
echo "==> mpi: building ${progs[*]} with MPICH $have and ${tools[*]}, packing images/out/mpi.ext4"
dir=$out/mpi
rm -rf "$dir" && mkdir -p "$dir/bin"
for p in "${progs[@]}"; do
  mpicc.mpich -O2 -Wall -Wextra -Werror -o "$dir/bin/$p" "$here/$p.c"
done
for p in "${tools[@]}"; do
  gcc -O2 -Wall -Wextra -Werror -o "$dir/bin/$p" "$here/$p.c"
done
rm -f "$out/mpi.ext4" "$out/.mpi-key"
"$popvmm" disk pack --label mpi "$dir" "$out/mpi.ext4"
echo "$key" > "$out/.mpi-key"

#!/usr/bin/env bash
# fetch.sh NAME... — download the pinned .deb of each NAME listed in
# images/packages.lock into images/build/debs, verify its sha256, and unpack
# it into images/build/debs/NAME/. A verified, unpacked package is not
# fetched again. Downloaded packages are kept in the cache outside the work
# tree (images/cache.sh), so every clone on the machine downloads them once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
debs="$here/build/debs"
. "$here/cache.sh"
mkdir -p "$debs"
for name in "$@"; do
  line=$(awk -v n="$name" '$1 == n {print; exit}' "$here/packages.lock")
  [ -n "$line" ] || { echo "fetch: $name is not pinned in images/packages.lock" >&2; exit 1; }
  read -r _ version sha <<<"$line"
  deb="$debs/${name}_${version//:/%3a}.deb"
  stamp="$debs/$name/.sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
    continue
  fi
  cached="$POPVMM_CACHE/debs/$(basename "$deb")"
  if [ ! -f "$deb" ] && [ -f "$cached" ]; then
    cp "$cached" "$deb"
  fi
  if [ ! -f "$deb" ] || ! echo "$sha  $deb" | sha256sum -c --status; then
    if ! apt-cache show "$name=$version" >/dev/null 2>&1 && [ -z "${updated:-}" ]; then
      echo "==> apt-get update (package lists do not know $name=$version)"
      apt-get update -qq
      updated=1
    fi
    echo "==> download $name=$version"
    ( cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$name=$version" ) || {
      echo "fetch: apt-get download $name=$version failed; run 'apt-get update', or bump images/packages.lock if Debian no longer serves that version" >&2
      exit 1
    }
    got=$(ls "$debs"/"${name}"_*.deb | head -1)
    [ "$got" = "$deb" ] || mv "$got" "$deb"
    mkdir -p "$POPVMM_CACHE/debs" && cp "$deb" "$cached.tmp" && mv "$cached.tmp" "$cached"
  fi
  if ! echo "$sha  $deb" | sha256sum -c --status; then
    echo "fetch: $deb: sha256 $(sha256sum "$deb" | cut -d' ' -f1), want $sha (images/packages.lock)" >&2
    rm -f "$deb"
    exit 1
  fi
  echo "==> unpack $name"
  rm -rf "$debs/$name"
  dpkg-deb -x "$deb" "$debs/$name"
  echo "$sha" > "$stamp"
done

#!/usr/bin/env bash
# build-module.sh FLAVOUR — the window network's driver (images/drivers/winnet)
# as a module of the FLAVOUR kernel, into images/out/FLAVOUR/winnet.ko, built
# with the kernel's module build kit (build-modkit.sh) and keyed by the
# kernel's key and the driver's sources: a change to the driver rebuilds the
# module in seconds, never the kernel.
set -euo pipefail
flavour=${1:?usage: build-module.sh full|light}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/out/$flavour"
drv="$here/drivers/winnet"
"$here/build-modkit.sh" "$flavour"
kitkey=$(cat "$out/.modkit-key")
key=$( { echo "$kitkey"; cat "$drv"/*; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/.winnet-key" ] && [ "$(cat "$out/.winnet-key")" = "$key" ] && [ -f "$out/winnet.ko" ]; then
  echo "==> $flavour winnet.ko is up to date"
  exit 0
fi
kitdir="$here/build/modkit-$flavour"
if [ "$(cat "$kitdir/.key" 2>/dev/null)" != "$kitkey" ]; then
  rm -rf "$kitdir"
  mkdir -p "$kitdir"
  tar -C "$kitdir" --strip-components=1 -xzf "$out/modkit.tar.gz"
  echo "$kitkey" > "$kitdir/.key"
fi
work="$here/build/winnet-$flavour"
rm -rf "$work"
cp -r "$drv" "$work"
if ! make -C "$kitdir" M="$work" modules >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  echo "build-module: winnet.ko for $flavour failed" >&2
  exit 1
fi
if grep -qi 'warning' "$work/build.log"; then
  grep -i -A3 'warning' "$work/build.log" >&2
  echo "build-module: winnet.ko for $flavour built with warnings" >&2
  exit 1
fi
cp "$work/winnet.ko" "$out/winnet.ko.tmp" && mv "$out/winnet.ko.tmp" "$out/winnet.ko"
echo "$key" > "$out/.winnet-key"
echo "==> $flavour winnet.ko: $(stat -c %s "$out/winnet.ko") bytes"

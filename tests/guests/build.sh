#!/bin/sh
# Builds the tier-2 freestanding guests into tests/guests/out/NAME.bin
# (flat 32-bit binaries for vmm.FormatFlat). Needs only gcc and binutils
# for x86 (no 32-bit libc). Runs in well under a second; the KVM-tier
# tests in package vmm read the results.
set -eu
cd "$(dirname "$0")"
CC=${CC:-gcc}
OBJCOPY=${OBJCOPY:-objcopy}
mkdir -p out
for src in *.c; do
	name=${src%.c}
	$CC -m32 -march=i686 -std=gnu11 -Os -Wall -Werror -ffreestanding -nostdlib -nostdinc \
		-fno-pic -fno-pie -no-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
		-mgeneral-regs-only -mno-red-zone -static -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,guest.ld \
		-o "out/$name.elf" "$src"
	$OBJCOPY -O binary "out/$name.elf" "out/$name.bin.tmp"
	mv "out/$name.bin.tmp" "out/$name.bin"
	rm -f "out/$name.elf"
done

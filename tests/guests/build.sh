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
# The PVH first-instruction kernel: ELF64 (what PVH loaders take) holding
# 32-bit code.
$CC -c -o out/first-pvh.o first-pvh.S
${LD:-ld} -m elf_x86_64 -N --no-warn-rwx-segments -Ttext=0x100000 -e _start --build-id=none -o out/first-pvh.elf.tmp out/first-pvh.o
mv out/first-pvh.elf.tmp out/first-pvh.elf
rm -f out/first-pvh.o

#!/bin/sh
# Builds tests/guests/window.c as a multiboot ELF (out/window-mb.elf) for
# QEMU's -kernel: the same guest code popvmm's tier-2 test runs, for the
# doorbell round-trip comparison (bench/window-doorbell.sh).
set -eu
cd "$(dirname "$0")"
mkdir -p out
${CC:-gcc} -m32 -march=i686 -std=gnu11 -Os -Wall -Werror -ffreestanding -nostdlib -nostdinc \
	-fno-pic -fno-pie -no-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
	-mgeneral-regs-only -mno-red-zone -static -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,mb.ld \
	-I ../../tests/guests -o out/window-mb.elf mb.S ../../tests/guests/window.c

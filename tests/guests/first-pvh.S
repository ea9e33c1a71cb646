/* first-pvh: an ELF64 kernel with a PVH entry note whose first
 * instruction writes port 0x510, then halts. Both popvmm (FormatPVH) and
 * QEMU microvm (with isa-debug-exit on 0x510, which ends QEMU) boot it, so
 * their times to the first guest instruction compare in one lab run. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long _start

	.text
	.code32
	.globl _start
_start:
	movw $0x510, %dx
	movb $0, %al
	outb %al, %dx
1:	cli
	hlt
	jmp 1b

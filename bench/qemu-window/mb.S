/* Multiboot (v1) entry for the tier-2 window guest under QEMU's -kernel:
 * the header QEMU's loader looks for, then a stack of our own (multiboot
 * leaves ESP undefined) and the guest's usual _start. */
	.section .multiboot, "a"
	.align 4
	.long 0x1BADB002            /* magic */
	.long 0                     /* flags: ELF, no requests */
	.long -0x1BADB002           /* checksum */

	.text
	.globl mb_start
mb_start:
	mov $stack_top, %esp
	jmp _start

	.bss
	.align 16
	.space 16384
stack_top:

	.section .note.GNU-stack, "", @progbits

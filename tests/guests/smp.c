/* smp: the boot CPU reports its APIC id on PORT_BSP, copies a real-mode
 * trampoline to 0x10000 and wakes APIC id 1 with INIT and two
 * STARTUP IPIs (vector 0x10) through its LAPIC's ICR; the AP reports its
 * own APIC id (CPUID leaf 1) on PORT_AP and halts. */
#include "guest.h"

extern char ap_start[], ap_end[];
__asm__(".code16\n"
	"ap_start:\n"
	" movl $1, %eax\n"
	" xorl %ecx, %ecx\n"
	" cpuid\n"
	" shrl $24, %ebx\n"
	" movb %bl, %al\n"
	" movw $0x511, %dx\n"
	" outb %al, %dx\n"
	"1: cli\n"
	" hlt\n"
	" jmp 1b\n"
	"ap_end:\n"
	".code32\n");

#define TRAMPOLINE 0x10000u

static void icr(u32 dest, u32 low) {
	mmio_write(LAPIC + 0x310, dest << 24);
	mmio_write(LAPIC + 0x300, low);
	while (mmio_read(LAPIC + 0x300) & (1u << 12)) /* delivery pending */
		;
}

static void delay(u32 n) {
	for (volatile u32 i = 0; i < n; i++)
		;
}

void main(void) {
	uart_init(0);
	outb(PORT_BSP, (u8)cpuid_apic_id());
	char *dst = (char *)TRAMPOLINE;
	for (char *p = ap_start; p < ap_end; p++)
		*dst++ = *p;
	mmio_write(LAPIC + 0xf0, 0x1ff);
	icr(1, 0x00004500); /* INIT, level assert */
	delay(10000);
	icr(1, 0x00004600 | (TRAMPOLINE >> 12)); /* STARTUP */
	delay(1000);
	icr(1, 0x00004600 | (TRAMPOLINE >> 12));
	uart_puts("popvmm-guest: sipi sent\n");
	halt_forever();
}

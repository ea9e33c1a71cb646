/* echo: interrupt-driven UART input. COM1's IRQ 4 is routed through the
 * IOAPIC (pin 4, edge, active high, as the MP table says) to vector 0x34
 * on the boot CPU's LAPIC; the handler reads every received byte and
 * sends it back upper-cased. The 8259 PICs are masked. */
#include "guest.h"

#define VECTOR 0x34

static struct idt_entry idt[256];
static volatile u32 received;

__attribute__((interrupt)) static void uart_isr(struct interrupt_frame *f) {
	(void)f;
	while (inb(COM1 + 5) & 0x01) {
		char c = (char)inb(COM1);
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		uart_putc(c);
		received++;
	}
	lapic_eoi();
}

static void ioapic_write(u32 reg, u32 v) {
	mmio_write(IOAPIC, reg);
	mmio_write(IOAPIC + 0x10, v);
}

void main(void) {
	idt[VECTOR] = idt_gate((u32)uart_isr, 0x10);
	idt_load(idt, sizeof(idt));

	lapic_only();
	ioapic_write(0x10 + 2 * 4 + 1, 0 << 24); /* pin 4 to APIC id 0 */
	ioapic_write(0x10 + 2 * 4, VECTOR);      /* fixed, physical, edge, high, unmasked */

	uart_init(0x01); /* receive-data interrupt */
	uart_puts("popvmm-guest: echo ready\n");
	for (;;)
		__asm__ volatile("sti; hlt");
}

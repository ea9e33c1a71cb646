/* echo: interrupt-driven UART input. COM1's IRQ 4 is routed through the
 * IOAPIC (pin 4, edge, active high, as the MP table says) to vector 0x34
 * on the boot CPU's LAPIC; the handler reads every received byte and
 * sends it back upper-cased. The 8259 PICs are masked. */
#include "guest.h"

#define VECTOR 0x34

struct idt_entry {
	u16 off_lo, sel;
	u8 zero, attr;
	u16 off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];
static volatile u32 received;

struct interrupt_frame;

__attribute__((interrupt)) static void uart_isr(struct interrupt_frame *f) {
	(void)f;
	while (inb(COM1 + 5) & 0x01) {
		char c = (char)inb(COM1);
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		uart_putc(c);
		received++;
	}
	mmio_write(LAPIC + 0xb0, 0); /* EOI */
}

static void ioapic_write(u32 reg, u32 v) {
	mmio_write(IOAPIC, reg);
	mmio_write(IOAPIC + 0x10, v);
}

void main(void) {
	u32 h = (u32)uart_isr;
	idt[VECTOR] = (struct idt_entry){(u16)h, 0x10, 0, 0x8e, (u16)(h >> 16)};
	struct __attribute__((packed)) {
		u16 limit;
		u32 base;
	} idtr = {sizeof(idt) - 1, (u32)idt};
	__asm__ volatile("lidt %0" : : "m"(idtr));

	outb(0x21, 0xff); /* mask both PICs */
	outb(0xa1, 0xff);
	mmio_write(LAPIC + 0x80, 0);     /* TPR: accept everything */
	mmio_write(LAPIC + 0xf0, 0x1ff); /* SVR: APIC on, spurious vector 0xff */
	ioapic_write(0x10 + 2 * 4 + 1, 0 << 24); /* pin 4 to APIC id 0 */
	ioapic_write(0x10 + 2 * 4, VECTOR);      /* fixed, physical, edge, high, unmasked */

	uart_init(0x01); /* receive-data interrupt */
	uart_puts("popvmm-guest: echo ready\n");
	for (;;)
		__asm__ volatile("sti; hlt");
}

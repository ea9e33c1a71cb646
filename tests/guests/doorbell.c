/* doorbell: the inter-kernel doorbell path in miniature. The guest rings
 * by writing DOORBELL (an MMIO address the host registers as an
 * ioeventfd, so the write never leaves KVM), and takes MSIs with vector
 * 0x40 (the host routes a GSI to that MSI and raises it through an irqfd),
 * printing "msi!" for each. */
#include "guest.h"

#define VECTOR 0x40
#define DOORBELL 0xd0000000u

static struct idt_entry idt[256];

__attribute__((interrupt)) static void msi_isr(struct interrupt_frame *f) {
	(void)f;
	uart_puts("msi!\n");
	lapic_eoi();
}

void main(void) {
	idt[VECTOR] = idt_gate((u32)msi_isr, 0x10);
	idt_load(idt, sizeof(idt));
	lapic_only();
	uart_init(0);
	uart_puts("popvmm-guest: doorbell ready\n");
	mmio_write(DOORBELL, 0x1234);
	uart_puts("popvmm-guest: rang\n");
	for (;;)
		__asm__ volatile("sti; hlt");
}

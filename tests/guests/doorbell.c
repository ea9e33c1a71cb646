/* doorbell: the inter-kernel doorbell path in miniature. The guest rings
 * by writing DOORBELL (an MMIO address the host registers as an
 * ioeventfd, so the write never leaves KVM), and takes MSIs with vector
 * 0x40 (the host routes a GSI to that MSI and raises it through an irqfd),
 * printing "msi!" for each. */
#include "guest.h"

#define VECTOR 0x40
#define DOORBELL 0xd0000000u

struct idt_entry {
	u16 off_lo, sel;
	u8 zero, attr;
	u16 off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];

struct interrupt_frame;

__attribute__((interrupt)) static void msi_isr(struct interrupt_frame *f) {
	(void)f;
	uart_puts("msi!\n");
	mmio_write(LAPIC + 0xb0, 0); /* EOI */
}

void main(void) {
	u32 h = (u32)msi_isr;
	idt[VECTOR] = (struct idt_entry){(u16)h, 0x10, 0, 0x8e, (u16)(h >> 16)};
	struct __attribute__((packed)) {
		u16 limit;
		u32 base;
	} idtr = {sizeof(idt) - 1, (u32)idt};
	__asm__ volatile("lidt %0" : : "m"(idtr));
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	mmio_write(LAPIC + 0x80, 0);
	mmio_write(LAPIC + 0xf0, 0x1ff);
	uart_init(0);
	uart_puts("popvmm-guest: doorbell ready\n");
	mmio_write(DOORBELL, 0x1234);
	uart_puts("popvmm-guest: rang\n");
	for (;;)
		__asm__ volatile("sti; hlt");
}

/* Freestanding tier-2 test guests for popvmm: flat 32-bit binaries loaded
 * at 1 MiB (vmm.FormatFlat), entered in protected mode with paging off,
 * flat segments (code 0x10, data 0x18) and a stack below 0x8ff0. */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define COM1 0x3f8
#define LAPIC 0xfee00000u
#define IOAPIC 0xfec00000u

/* Ports the tests watch (a recording device the test inserts). */
#define PORT_BSP 0x510 /* the boot vCPU's APIC id from CPUID */
#define PORT_AP 0x511  /* an application processor's APIC id from CPUID */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read(u32 addr) { return *(volatile u32 *)addr; }

static inline u32 cpuid_apic_id(void) {
	u32 a = 1, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return b >> 24;
}

static inline void uart_init(u8 ier) {
	outb(COM1 + 3, 0x03); /* 8N1 */
	outb(COM1 + 1, ier);
	outb(COM1 + 4, 0x0b); /* DTR, RTS, OUT2 (gates the IRQ line) */
}

static inline void uart_putc(char c) {
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, (u8)c);
}

static inline void uart_puts(const char *s) {
	while (*s)
		uart_putc(*s++);
}

static inline void uart_putu(u32 v) {
	char buf[11];
	int i = 10;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	uart_puts(&buf[i]);
}

/* Interrupts: an IDT of 32-bit interrupt gates, and a LAPIC that is the
 * only source of interrupts. */
struct idt_entry {
	u16 off_lo, sel;
	u8 zero, attr;
	u16 off_hi;
} __attribute__((packed));

struct interrupt_frame; /* the argument of an __attribute__((interrupt)) handler */

/* idt_gate is an interrupt gate to handler in code segment cs. */
static inline struct idt_entry idt_gate(u32 handler, u16 cs) {
	return (struct idt_entry){(u16)handler, cs, 0, 0x8e, (u16)(handler >> 16)};
}

/* idt_load makes the size bytes at idt the IDT. */
static inline void idt_load(struct idt_entry *idt, u32 size) {
	struct __attribute__((packed)) {
		u16 limit;
		u32 base;
	} idtr = {(u16)(size - 1), (u32)idt};
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

/* lapic_only masks both 8259 PICs and turns the LAPIC on, accepting every
 * vector. */
static inline void lapic_only(void) {
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	mmio_write(LAPIC + 0x80, 0);     /* TPR: accept everything */
	mmio_write(LAPIC + 0xf0, 0x1ff); /* SVR: APIC on, spurious vector 0xff */
}

static inline void lapic_eoi(void) { mmio_write(LAPIC + 0xb0, 0); }

static inline void halt_forever(void) {
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* Entry: the linker script puts .text.start first, at 1 MiB. */
void main(void);
__asm__(".section .text.start\n.globl _start\n_start:\n call main\n1: cli\n hlt\n jmp 1b\n.text\n");

#endif

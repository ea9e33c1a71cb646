/* window: two kernels on popvmm's window device (1af4:1110, QEMU's
 * ivshmem-doorbell registers). Each finds the device on PCI bus 0, moves
 * the window BAR below 4 GiB (this guest runs without paging), enables
 * MSI-X vector 0 (interrupt 0x40) and reads its peer id from IVPosition.
 *
 * The host writes parameters into the window's common page (PARAMS) and
 * formats the header page (the messaging layer's geometry: sectionSize at
 * 16, sectionsOffset at 24). Each kernel's mailbox is in its own section
 * (section + 2048), so window.protect lets only it write there.
 *
 *   peer 0: ROUNDS times, writes seq into its mailbox and rings peer 1,
 *           then sleeps (sti; hlt) until peer 1's mailbox echoes it;
 *           then serves host requests: when the common page's HOSTREQ
 *           changes, it writes it into its mailbox's reply word and rings
 *           the host peer named in HOSTPEER.
 *   peer 1: echoes each seq back and rings peer 0; then tries to write
 *           peer 0's mailbox, the header page and the common page, and
 *           reports what stuck.
 * Lines the test waits for start with "window:". */
#include "guest.h"

#define VECTOR 0x40
#define TIMER_VECTOR 0x41 /* the LAPIC timer: a watchdog for lost doorbells */
#define WIN 0xfe000000u /* where the guest moves BAR2 */

#define REG_IVPOSITION 8
#define REG_DOORBELL 12

#define PARAMS (WIN + 4096 + 2048) /* in the common page */
#define P_ROUNDS 0
#define P_HOSTREQ 4
#define P_HOSTPEER 8
#define P_SCRATCH 12

#define MB_SEQ 0
#define MB_REPLY 4
#define MB_POKE 8

static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) {
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static u32 cfg_read(u32 dev, u32 reg) {
	outl(0xcf8, 0x80000000u | dev << 11 | reg);
	return inl(0xcfc);
}

static void cfg_write(u32 dev, u32 reg, u32 v) {
	outl(0xcf8, 0x80000000u | dev << 11 | reg);
	outl(0xcfc, v);
}

static struct idt_entry idt[256];
static volatile u32 irqs, ticks, lost;

__attribute__((interrupt)) static void msi_isr(struct interrupt_frame *f) {
	(void)f;
	irqs++;
	lapic_eoi();
}

__attribute__((interrupt)) static void timer_isr(struct interrupt_frame *f) {
	(void)f;
	ticks++;
	lapic_eoi();
}

static volatile u32 *word(u32 addr) { return (volatile u32 *)addr; }

static inline u32 rdtsc32(void) {
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo;
}

/* sleep_until waits, halted between interrupts, until *p == v. When the
 * watchdog timer, not a doorbell, ended the wait with *p == v by then, the
 * doorbell may still be on its way (the peer writes, then rings): it gets
 * 2^28 TSC cycles (a tenth of a second or more) to interrupt, else it is
 * counted lost. */
static void sleep_until(volatile u32 *p, u32 v) {
	int by_timer = 0;
	u32 i = 0;
	for (;;) {
		__asm__ volatile("cli");
		if (*p == v)
			break;
		u32 t = ticks;
		i = irqs;
		__asm__ volatile("sti; hlt");
		by_timer = irqs == i && ticks != t;
	}
	__asm__ volatile("sti");
	if (!by_timer)
		return;
	u32 t0 = rdtsc32();
	while (irqs == i && rdtsc32() - t0 < 1u << 28)
		__asm__ volatile("pause");
	if (irqs == i)
		lost++;
}

static void say(const char *s, u32 v) {
	uart_puts("window: ");
	uart_puts(s);
	uart_putu(v);
	uart_puts("\n");
}

void main(void) {
	u16 cs; /* 0x10 under popvmm; the multiboot build under QEMU has its own */
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	idt[VECTOR] = idt_gate((u32)msi_isr, cs);
	idt[TIMER_VECTOR] = idt_gate((u32)timer_isr, cs);
	idt_load(idt, sizeof(idt));
	lapic_only(); /* PICs masked: only MSIs and the timer come in */
	mmio_write(LAPIC + 0x3e0, 0xb);                         /* timer: divide by 1 */
	mmio_write(LAPIC + 0x320, TIMER_VECTOR | 1u << 17);     /* periodic */
	mmio_write(LAPIC + 0x380, 50000000);                    /* ~50 ms at KVM's 1 GHz */
	uart_init(0);

	u32 dev = 0;
	for (u32 d = 1; d < 32; d++)
		if (cfg_read(d, 0) == 0x11101af4u) {
			dev = d;
			break;
		}
	if (!dev) {
		uart_puts("window: no device\n");
		halt_forever();
	}
	cfg_write(dev, 0x18, WIN | 0xc); /* BAR2: 64-bit prefetchable, low half */
	cfg_write(dev, 0x1c, 0);         /* high half */
	cfg_write(dev, 0x04, cfg_read(dev, 0x04) | 0x6); /* memory decode, bus master */
	u32 regs = cfg_read(dev, 0x10) & ~0xfu;
	u32 msix = cfg_read(dev, 0x14) & ~0xfu;
	u32 me = mmio_read(regs + REG_IVPOSITION);
	/* MSI-X vector 0: to APIC 0, interrupt VECTOR, unmasked; then enable. */
	mmio_write(msix + 0, 0xfee00000u);
	mmio_write(msix + 4, 0);
	mmio_write(msix + 8, VECTOR);
	mmio_write(msix + 12, 0);
	u32 cap = cfg_read(dev, 0x34) & 0xff;
	while (cap && (cfg_read(dev, cap) & 0xff) != 0x11)
		cap = (cfg_read(dev, cap) >> 8) & 0xff;
	if (!cap) {
		uart_puts("window: no MSI-X capability\n");
		halt_forever();
	}
	cfg_write(dev, cap, cfg_read(dev, cap) | 0x80000000u);
	__asm__ volatile("sti");

	u32 secsz = *word(WIN + 16), secoff = *word(WIN + 24);
	volatile u32 *mine = word(WIN + secoff + me * secsz + 2048);
	volatile u32 *theirs = word(WIN + secoff + (1 - me) * secsz + 2048);
	u32 rounds = *word(PARAMS + P_ROUNDS);
	say("ready, peer ", me);

	if (me == 0) {
		uart_puts("window: pingpong start\n");
		for (u32 i = 1; i <= rounds; i++) {
			mine[MB_SEQ / 4] = i;
			mmio_write(regs + REG_DOORBELL, 1u << 16 | 0);
			sleep_until(&theirs[MB_SEQ / 4], i);
		}
		say("pingpong done, rounds ", rounds);
		say("interrupts ", irqs);
		say("lost doorbells ", lost);
		/* Host requests: reply, ring the host peer. */
		u32 served = 0;
		for (;;) {
			volatile u32 *req = word(PARAMS + P_HOSTREQ);
			u32 r;
			for (;;) {
				__asm__ volatile("cli");
				r = *req;
				if (r != served)
					break;
				__asm__ volatile("sti; hlt");
			}
			__asm__ volatile("sti");
			served = r;
			mine[MB_REPLY / 4] = r * 2;
			mmio_write(regs + REG_DOORBELL, *word(PARAMS + P_HOSTPEER) << 16 | 0);
			say("host request ", r);
		}
	}

	for (u32 i = 1; i <= rounds; i++) {
		sleep_until(&theirs[MB_SEQ / 4], i);
		mine[MB_SEQ / 4] = i;
		mmio_write(regs + REG_DOORBELL, 0u << 16 | 0);
	}
	say("pingpong done, rounds ", rounds);
	say("interrupts ", irqs);
	say("lost doorbells ", lost);
	/* Protection: peer 0's section and the header page are read-only for
	 * this kernel, the common page and its own section are not. */
	theirs[MB_POKE / 4] = 0xdeadbeefu;
	say("other section after write: ", theirs[MB_POKE / 4]);
	*word(WIN + 32) = 0xdeadbeefu;
	say("header after write: ", *word(WIN + 32));
	*word(PARAMS + P_SCRATCH) = 4242;
	say("common after write: ", *word(PARAMS + P_SCRATCH));
	mine[MB_POKE / 4] = 4343;
	say("own section after write: ", mine[MB_POKE / 4]);
	halt_forever();
}

/* xcr0: does the hypervisor see the guest's XSETBV? Enables XSAVE
 * (CR4.OSXSAVE), sets XCR0 to x87|SSE|AVX (what CPUID 0xD.0 EAX offers of
 * those) and reports, on COM1, the XCR0 it asked for, XGETBV right after
 * the XSETBV, CPUID 0xD.0 EBX (the XSAVE area size for the current XCR0,
 * which KVM recomputes on an intercepted XSETBV: SDM vol. 2A, CPUID leaf
 * 0DH) and XGETBV again after a round of exits to the VMM (the UART's port
 * writes), when KVM has reloaded the XCR0 it believes the guest has.
 * A hypervisor that misses the XSETBV (QEMU TCG's SVM without the XSETBV
 * intercept) shows in the last three. */
#include "guest.h"

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d) {
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline u32 xgetbv0(void) {
	u32 lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return lo;
}

static void report(const char *what, u32 v) {
	uart_puts(what);
	uart_putu(v);
	uart_putc(' ');
}

void main(void) {
	u32 a, b, c, d, cr4, want;
	uart_init(0);
	cpuid(1, 0, &a, &b, &c, &d);
	if (!(c & (1u << 26))) {
		uart_puts("popvmm-guest: xcr0 no-xsave\n");
		for (;;)
			__asm__ volatile("hlt");
	}
	cpuid(0xd, 0, &a, &b, &c, &d);
	want = a & 0x7; /* x87, SSE, AVX where offered */
	u32 size = 576; /* legacy area and XSAVE header */
	if (want & 4) {
		cpuid(0xd, 2, &a, &b, &c, &d); /* AVX: EAX size, EBX offset */
		size = b + a;
	}
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= (1u << 9) | (1u << 10) | (1u << 18); /* OSFXSR, OSXMMEXCPT, OSXSAVE */
	__asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
	__asm__ volatile("xsetbv" : : "a"(want), "d"(0), "c"(0));
	u32 got = xgetbv0();
	cpuid(0xd, 0, &a, &b, &c, &d);
	uart_puts("popvmm-guest: xcr0 ");
	report("set=", want);
	report("get=", got);
	report("size=", b);
	report("want-size=", size);
	report("after-exits=", xgetbv0());
	uart_puts("\n");
	for (;;)
		__asm__ volatile("hlt");
}

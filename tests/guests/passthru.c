/* passthru: reads the 16 bytes at PT_RO (a read-only passthrough region)
 * and at PT_RW (a writable one), tries to overwrite both with "written!",
 * and prints what each holds before and after. */
#include "guest.h"

#define PT_RO 0x2000000u
#define PT_RW 0x2100000u

static void show(const char *tag, u32 addr) {
	uart_puts(tag);
	for (u32 i = 0; i < 16; i++) {
		char c = *(volatile char *)(addr + i);
		uart_putc(c >= ' ' && c <= '~' ? c : '.');
	}
	uart_putc('\n');
}

static void overwrite(u32 addr) {
	const char *s = "written!";
	for (u32 i = 0; s[i]; i++)
		*(volatile char *)(addr + i) = s[i];
}

void main(void) {
	uart_init(0);
	show("ro before: ", PT_RO);
	show("rw before: ", PT_RW);
	overwrite(PT_RO);
	overwrite(PT_RW);
	show("ro after: ", PT_RO);
	show("rw after: ", PT_RW);
	uart_puts("popvmm-guest: passthru done\n");
}

/* triple: says so, then faults with no IDT (limit 0): #UD cannot be
 * delivered, nor the #GP or #DF that follow: a triple fault (shutdown). */
#include "guest.h"

void main(void) {
	uart_init(0);
	uart_puts("popvmm-guest: triple fault now\n");
	struct __attribute__((packed)) {
		u16 limit;
		u32 base;
	} idt = {0, 0};
	__asm__ volatile("lidt %0; ud2" : : "m"(idt));
}

/* hello: prints a greeting on COM1, then "tick N" lines forever. The UART
 * output test and the crash-isolation test's neighbour. */
#include "guest.h"

void main(void) {
	uart_init(0);
	uart_puts("popvmm-guest: hello\n");
	for (u32 n = 0;; n++) {
		uart_puts("tick ");
		uart_putu(n);
		uart_putc('\n');
	}
}

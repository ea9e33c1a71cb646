/* reset: announces its boot, then pulses the reset line through the
 * i8042 (command 0xFE on port 0x64), as Linux's "kbd" reboot does. */
#include "guest.h"

void main(void) {
	uart_init(0);
	uart_puts("popvmm-guest: boot\n");
	outb(0x64, 0xfe);
	halt_forever();
}

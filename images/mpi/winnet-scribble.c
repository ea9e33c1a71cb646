// SPDX-License-Identifier: GPL-2.0
/*
 * winnet-scribble - a hostile writer for the window network's tests: run
 * as root in a kernel, it maps its own window network function's BAR2
 * (the window, through sysfs's resource2 of the device the winnet driver
 * is bound to) and writes garbage into its ring to peer DEST, as a broken
 * or hostile kernel could: descriptors that point outside the data area,
 * are too long or empty, or run past its end; a tail far out of range;
 * then every descriptor random with a tail one ring ahead. The receiver
 * must drop and count it all and run on (docs/winnet.md). The layout
 * mirrors winnet/layout.go.
 *
 *	winnet-scribble SELF DEST
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WN_MAGIC	0x3154454E57504F50ULL	/* "POPWNET1" */
#define WN_PAGE		4096
#define HDR_MAX_PEERS	12
#define HDR_SECTION	16
#define HDR_RING	24
#define HDR_DATA	32
#define HDR_SLOTS	40
#define HDR_MTU		44
#define CTL_PEERS	64
#define CTL_LINE	64
#define RING_TAIL	0
#define RING_DESC	64
#define ETH_HLEN	14

static volatile uint8_t *mem;

static uint64_t rd64(uint64_t off) { return *(volatile uint64_t *)(mem + off); }
static uint32_t rd32(uint64_t off) { return *(volatile uint32_t *)(mem + off); }
static void wr64(uint64_t off, uint64_t v) { *(volatile uint64_t *)(mem + off) = v; }

static uint64_t desc(uint64_t off, uint64_t len) { return (off & 0xffffffff) | len << 32; }

int main(int argc, char **argv)
{
	uint64_t section, ring_size, data, r, tail, i;
	uint32_t peers, slots, mtu;
	int self, dest, fd;
	struct stat st;
	glob_t g;

	if (argc != 3) {
		fprintf(stderr, "usage: winnet-scribble SELF DEST\n");
		return 2;
	}
	self = atoi(argv[1]);
	dest = atoi(argv[2]);
	if (glob("/sys/bus/pci/drivers/winnet/0000:*/resource2", 0, NULL, &g) || g.gl_pathc != 1) {
		fprintf(stderr, "winnet-scribble: no one device bound to the winnet driver\n");
		return 1;
	}
	fd = open(g.gl_pathv[0], O_RDWR | O_SYNC);
	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "winnet-scribble: %s: %s\n", g.gl_pathv[0], strerror(errno));
		return 1;
	}
	mem = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "winnet-scribble: mmap %s: %s\n", g.gl_pathv[0], strerror(errno));
		return 1;
	}
	peers = rd32(HDR_MAX_PEERS);
	section = rd64(HDR_SECTION);
	ring_size = rd64(HDR_RING);
	data = rd64(HDR_DATA);
	slots = rd32(HDR_SLOTS);
	mtu = rd32(HDR_MTU);
	if (rd64(0) != WN_MAGIC || self < 0 || dest < 0 || (uint32_t)self >= peers ||
	    (uint32_t)dest >= peers || self == dest || slots == 0 || (slots & (slots - 1))) {
		fprintf(stderr, "winnet-scribble: not a winnet window, or no ring %d->%d (%u peers)\n",
			self, dest, peers);
		return 1;
	}
	r = WN_PAGE + self * section + WN_PAGE + dest * ring_size;
	if (WN_PAGE + peers * section > (uint64_t)st.st_size || ring_size < WN_PAGE + data ||
	    section < WN_PAGE + peers * ring_size) {
		fprintf(stderr, "winnet-scribble: the header's geometry does not fit the %" PRId64 "-byte BAR\n",
			(int64_t)st.st_size);
		return 1;
	}
	tail = rd64(r + RING_TAIL);
	printf("ring %d->%d at %#" PRIx64 ": tail %" PRIu64 ", %u slots, %" PRIu64 "-byte data area, mtu %u\n",
	       self, dest, r, tail, slots, data, mtu);

	/* Four bad descriptors: outside, too long, empty, past the end. */
	uint64_t bad[] = { desc(data, 64), desc(0, mtu + ETH_HLEN + 1), 0, desc(data - 8, 1000) };

	for (i = 0; i < 4; i++)
		wr64(r + RING_DESC + 8 * ((tail + i) % slots), bad[i]);
	__atomic_store_n((uint64_t *)(mem + r + RING_TAIL), tail + 4, __ATOMIC_RELEASE);
	printf("4 bad descriptors published\n");
	fflush(stdout);
	sleep(2);
	wr64(r + RING_TAIL, tail + ((uint64_t)1 << 40));
	printf("tail %" PRIu64 " published\n", tail + ((uint64_t)1 << 40));
	fflush(stdout);
	sleep(2);

	/*
	 * Every descriptor random, a whole ring of them published from where
	 * the receiver's head is (its control page's block for this peer).
	 */
	srandom(getpid());
	tail = rd64(WN_PAGE + dest * section + CTL_PEERS + self * CTL_LINE);
	for (i = 0; i < slots; i++)
		wr64(r + RING_DESC + 8 * i, (uint64_t)random() << 33 ^ (uint64_t)random());
	__atomic_store_n((uint64_t *)(mem + r + RING_TAIL), tail + slots, __ATOMIC_RELEASE);
	printf("%u random descriptors published\n", slots);
	fflush(stdout);
	sleep(2);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * winnet: popvmm's window network. Every kernel of a popvmm cluster gets an
 * ivshmem-doorbell PCI function (1af4:1110, subsystem 1af4:1101) whose BAR2
 * is a window shared by all kernels; this driver makes it an Ethernet
 * device, win0, whose frames go from one kernel's memory to another's
 * through one single-producer ring per pair of kernels. The layout and its
 * rules are popvmm's docs/winnet.md; package winnet of popvmm is their
 * reference, which this file follows rule for rule.
 *
 * Every value read from another kernel's section of the window is bounded
 * before use: a kernel that writes garbage costs the others dropped and
 * counted frames, never a crash or a stuck ring.
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/netdevice.h>
#include <linux/etherdevice.h>
#include <linux/interrupt.h>
#include <linux/timer.h>
#include <linux/io.h>

#define WN_NAME		"winnet"
#define WN_MAGIC	0x3154454E57504F50ULL	/* "POPWNET1" */
#define WN_VERSION	1
#define WN_PAGE		4096ULL
#define WN_LINE		64ULL
#define WN_MAX_PEERS	56
#define WN_RING_SLOTS	256ULL
#define WN_MIN_DATA	(32ULL << 10)
#define WN_MAX_DATA	(16ULL << 20)
#define WN_MAX_MTU	65000ULL

/* Header (page 0), written by popvmm only. */
#define HDR_MAGIC	0
#define HDR_VERSION	8
#define HDR_PEERS	12
#define HDR_SECTION	16
#define HDR_RING	24
#define HDR_DATA	32
#define HDR_SLOTS	40
#define HDR_MTU		44

/* A section's control page. */
#define CTL_STATE	0
#define CTL_GEN		4
#define CTL_HEARTBEAT	8
#define CTL_ARMED	16
#define CTL_ARMSEQ	20
#define CTL_PEERS	64
#define PEER_RXHEAD	0
#define PEER_RXPKTS	8
#define PEER_RXBYTES	16
#define PEER_RXDROPS	24

/*
 * A ring's first page: the tail's cache line also holds the producer's
 * counters for the destination (its send path writes them with the tail).
 */
#define RING_TAIL	0
#define RING_BASE	8
#define RING_TXPKTS	16
#define RING_TXBYTES	24
#define RING_TXDROPS	32
#define RING_DESC	64

#define STATE_DOWN	0
#define STATE_UP	1

/* BAR0: ivshmem's registers. */
#define REG_INTRMASK	0
#define REG_INTRSTATUS	4
#define REG_IVPOSITION	8
#define REG_DOORBELL	12

#define WN_HEARTBEAT	(HZ / 10)
#define WN_PEER_TIMEOUT	HZ

struct winnet {
	struct pci_dev *pdev;
	struct net_device *ndev;
	struct napi_struct napi;
	void __iomem *regs;
	u8 *mem;
	u64 size;
	int id;
	int peers;
	u64 sec_size;
	u64 ring_size;
	u64 data_size;
	u32 mtu;
	bool msix;
	int irq;
	struct timer_list timer;
	int next_src;
	u32 seen_gen[WN_MAX_PEERS];
	u32 rung[WN_MAX_PEERS];
	u64 last_hb[WN_MAX_PEERS];
	unsigned long hb_at[WN_MAX_PEERS];
	bool alive[WN_MAX_PEERS];
};

static inline u64 *wn64(struct winnet *wn, u64 off)
{
	return (u64 *)(wn->mem + off);
}

static inline u32 *wn32(struct winnet *wn, u64 off)
{
	return (u32 *)(wn->mem + off);
}

static inline u64 wn_section(struct winnet *wn, int p)
{
	return WN_PAGE + (u64)p * wn->sec_size;
}

static inline u64 wn_ring(struct winnet *wn, int p, int d)
{
	return wn_section(wn, p) + WN_PAGE + (u64)d * wn->ring_size;
}

static inline u64 wn_block(struct winnet *wn, int p, int q)
{
	return wn_section(wn, p) + CTL_PEERS + (u64)q * WN_LINE;
}

static inline u32 wn_max_frame(struct winnet *wn)
{
	return wn->mtu + ETH_HLEN;
}

/* One of this kernel's receive counters for source q. */
static inline void wn_count(struct winnet *wn, int q, u64 field, u64 n)
{
	u64 *c = wn64(wn, wn_block(wn, wn->id, q) + field);

	WRITE_ONCE(*c, READ_ONCE(*c) + n);
}

/* One of this kernel's send counters for destination d. */
static inline void wn_count_tx(struct winnet *wn, int d, u64 field, u64 n)
{
	u64 *c = wn64(wn, wn_ring(wn, wn->id, d) + field);

	WRITE_ONCE(*c, READ_ONCE(*c) + n);
}

/*
 * The geometry of a window of size bytes for that many peers, as popvmm's
 * winnet.For computes it; false if there is none.
 */
static bool wn_geometry(struct winnet *wn, u64 size, u32 peers)
{
	u64 sec, ring, data = 0;

	if (peers < 2 || peers > WN_MAX_PEERS || size < WN_PAGE)
		return false;
	sec = ((size - WN_PAGE) / peers) & ~(WN_PAGE - 1);
	ring = ((sec - min(sec, WN_PAGE)) / peers) & ~(WN_PAGE - 1);
	if (ring > WN_PAGE)
		data = min(ring - WN_PAGE, WN_MAX_DATA);
	if (data < WN_MIN_DATA)
		return false;
	wn->peers = peers;
	wn->data_size = data;
	wn->ring_size = WN_PAGE + data;
	wn->sec_size = WN_PAGE + peers * wn->ring_size;
	wn->mtu = min(WN_MAX_MTU, data / 4 - WN_LINE);
	return true;
}

/* Checks the header against the geometry of BAR2's size. */
static int wn_open_window(struct winnet *wn)
{
	u32 peers = READ_ONCE(*wn32(wn, HDR_PEERS));

	if (READ_ONCE(*wn64(wn, HDR_MAGIC)) != WN_MAGIC ||
	    READ_ONCE(*wn32(wn, HDR_VERSION)) != WN_VERSION ||
	    !wn_geometry(wn, wn->size, peers) ||
	    READ_ONCE(*wn64(wn, HDR_SECTION)) != wn->sec_size ||
	    READ_ONCE(*wn64(wn, HDR_RING)) != wn->ring_size ||
	    READ_ONCE(*wn64(wn, HDR_DATA)) != wn->data_size ||
	    READ_ONCE(*wn32(wn, HDR_SLOTS)) != WN_RING_SLOTS ||
	    READ_ONCE(*wn32(wn, HDR_MTU)) != wn->mtu)
		return -EINVAL;
	return 0;
}

static void wn_ring_bell(struct winnet *wn, int d)
{
	writel(((u32)d << 16) | 0, wn->regs + REG_DOORBELL);
}

/*
 * Copies skb into ring id->d and publishes it; rings d's doorbell if d
 * sleeps and this kernel has not rung it since d armed. Never blocks.
 */
static bool wn_send(struct winnet *wn, int d, struct sk_buff *skb)
{
	u64 r = wn_ring(wn, wn->id, d);
	u64 dsec = wn_section(wn, d);
	u64 len = skb->len, need, head, tail, out, at = 0;
	u32 seq;
	bool ok;

	if (!READ_ONCE(wn->alive[d]) || READ_ONCE(*wn32(wn, dsec + CTL_STATE)) != STATE_UP)
		goto drop;
	/* d's consumer index: its frames before it are copied out, their space free. */
	head = smp_load_acquire(wn64(wn, wn_block(wn, d, wn->id) + PEER_RXHEAD));
	tail = READ_ONCE(*wn64(wn, r + RING_TAIL));
	out = tail - head;
	if (out >= WN_RING_SLOTS)
		goto drop;
	need = ALIGN(len, WN_LINE);
	ok = need <= wn->data_size;
	if (out > 0) {
		u64 oldest = READ_ONCE(*wn64(wn, r + RING_DESC + 8 * (head % WN_RING_SLOTS)));
		u64 newest = READ_ONCE(*wn64(wn, r + RING_DESC + 8 * ((tail - 1) % WN_RING_SLOTS)));
		u64 pos = (newest & 0xffffffff) + ALIGN(newest >> 32, WN_LINE);

		oldest &= 0xffffffff;
		if (oldest >= wn->data_size || pos > wn->data_size) {
			ok = false;
		} else if (pos >= oldest) {
			if (wn->data_size - pos >= need)
				at = pos;
			else
				ok = need < oldest;
		} else {
			at = pos;
			ok = need < oldest - pos;
		}
	}
	if (!ok)
		goto drop;
	if (skb_copy_bits(skb, 0, wn->mem + r + WN_PAGE + at, len))
		goto drop;
	WRITE_ONCE(*wn64(wn, r + RING_DESC + 8 * (tail % WN_RING_SLOTS)), at | len << 32);
	/* Publish: the frame and its descriptor before the tail. */
	smp_store_release(wn64(wn, r + RING_TAIL), tail + 1);
	wn_count_tx(wn, d, RING_TXPKTS, 1);
	wn_count_tx(wn, d, RING_TXBYTES, len);
	/* Pairs with the barrier in wn_arm: tail store, then armed load. */
	smp_mb();
	if (READ_ONCE(*wn32(wn, dsec + CTL_ARMED)) == 1) {
		seq = READ_ONCE(*wn32(wn, dsec + CTL_ARMSEQ));
		if (seq != wn->rung[d]) {
			wn->rung[d] = seq;
			wn_ring_bell(wn, d);
		}
	}
	return true;
drop:
	wn_count_tx(wn, d, RING_TXDROPS, 1);
	return false;
}

static netdev_tx_t wn_xmit(struct sk_buff *skb, struct net_device *ndev)
{
	struct winnet *wn = netdev_priv(ndev);
	const u8 *dest = skb->data;
	bool sent = false;
	int d;

	if (skb->len < ETH_HLEN || skb->len > wn_max_frame(wn)) {
		ndev->stats.tx_dropped++;
		goto out;
	}
	if (is_multicast_ether_addr(dest)) {
		for (d = 0; d < wn->peers; d++)
			if (d != wn->id && READ_ONCE(wn->alive[d]))
				sent |= wn_send(wn, d, skb);
	} else if (dest[0] == 0x02 && dest[1] == 0x50 && dest[2] == 0x57 &&
		   dest[3] == 0x4e && dest[4] == 0 && dest[5] < wn->peers &&
		   dest[5] != wn->id) {
		sent = wn_send(wn, dest[5], skb);
	}
	if (sent) {
		ndev->stats.tx_packets++;
		ndev->stats.tx_bytes += skb->len;
	} else {
		ndev->stats.tx_dropped++;
	}
out:
	skb_tx_timestamp(skb);
	dev_consume_skb_any(skb);
	return NETDEV_TX_OK;
}

/* Takes up to budget frames from ring s->id into the stack. */
static int wn_receive(struct winnet *wn, int s, int budget)
{
	u64 r = wn_ring(wn, s, wn->id);
	u64 *headp = wn64(wn, wn_block(wn, wn->id, s) + PEER_RXHEAD);
	u8 *data = wn->mem + r + WN_PAGE;
	u64 head, tail, desc, off, len;
	u32 gen = READ_ONCE(*wn32(wn, wn_section(wn, s) + CTL_GEN));
	struct sk_buff *skb;
	int done = 0;

	if (gen != wn->seen_gen[s]) {
		wn->seen_gen[s] = gen;
		WRITE_ONCE(*headp, READ_ONCE(*wn64(wn, r + RING_BASE)));
	}
	head = READ_ONCE(*headp);
	/* The tail before the descriptors and frames it publishes. */
	tail = smp_load_acquire(wn64(wn, r + RING_TAIL));
	if (tail - head > WN_RING_SLOTS) {
		wn_count(wn, s, PEER_RXDROPS, 1);
		wn->ndev->stats.rx_errors++;
		net_warn_ratelimited("%s: peer %d: ring index out of range, resynchronised\n",
				     wn->ndev->name, s);
		/* Skip everything: the sender may reuse its ring. */
		smp_store_release(headp, tail);
		return 0;
	}
	for (; head != tail && done < budget; done++) {
		desc = READ_ONCE(*wn64(wn, r + RING_DESC + 8 * (head % WN_RING_SLOTS)));
		off = desc & 0xffffffff;
		len = desc >> 32;
		if (len < ETH_HLEN || len > wn_max_frame(wn) || off >= wn->data_size ||
		    len > wn->data_size - off) {
			wn_count(wn, s, PEER_RXDROPS, 1);
			wn->ndev->stats.rx_errors++;
			net_warn_ratelimited("%s: peer %d: bad descriptor %#llx dropped\n",
					     wn->ndev->name, s, desc);
		} else {
			skb = napi_alloc_skb(&wn->napi, len);
			if (!skb) {
				wn->ndev->stats.rx_dropped++;
			} else {
				skb_put_data(skb, data + off, len);
				skb->protocol = eth_type_trans(skb, wn->ndev);
				skb->ip_summed = CHECKSUM_UNNECESSARY;
				wn->ndev->stats.rx_packets++;
				wn->ndev->stats.rx_bytes += len;
				wn_count(wn, s, PEER_RXPKTS, 1);
				wn_count(wn, s, PEER_RXBYTES, len);
				napi_gro_receive(&wn->napi, skb);
			}
		}
		head++;
		/* The sender may reuse the space at once. */
		smp_store_release(headp, head);
	}
	return done;
}

static bool wn_pending(struct winnet *wn)
{
	int s;

	for (s = 0; s < wn->peers; s++) {
		if (s == wn->id)
			continue;
		if (READ_ONCE(*wn32(wn, wn_section(wn, s) + CTL_GEN)) != wn->seen_gen[s] ||
		    READ_ONCE(*wn64(wn, wn_ring(wn, s, wn->id) + RING_TAIL)) !=
		    READ_ONCE(*wn64(wn, wn_block(wn, wn->id, s) + PEER_RXHEAD)))
			return true;
	}
	return false;
}

/*
 * NAPI is done: arm (the senders ring a sleeping receiver only) and look
 * once more; false means a frame came meanwhile and polling goes on.
 */
static bool wn_arm(struct winnet *wn)
{
	u64 sec = wn_section(wn, wn->id);

	WRITE_ONCE(*wn32(wn, sec + CTL_ARMSEQ), READ_ONCE(*wn32(wn, sec + CTL_ARMSEQ)) + 1);
	WRITE_ONCE(*wn32(wn, sec + CTL_ARMED), 1);
	/* Pairs with the barrier in wn_send: armed store, then tail load. */
	smp_mb();
	if (wn_pending(wn)) {
		WRITE_ONCE(*wn32(wn, sec + CTL_ARMED), 0);
		return false;
	}
	return true;
}

static void wn_disarm(struct winnet *wn)
{
	WRITE_ONCE(*wn32(wn, wn_section(wn, wn->id) + CTL_ARMED), 0);
}

static int wn_poll(struct napi_struct *napi, int budget)
{
	struct winnet *wn = container_of(napi, struct winnet, napi);
	int done = 0, i, s;

	for (i = 0; i < wn->peers && done < budget; i++) {
		s = (wn->next_src + i) % wn->peers;
		if (s != wn->id)
			done += wn_receive(wn, s, budget - done);
	}
	wn->next_src = (wn->next_src + 1) % wn->peers;
	if (done < budget && napi_complete_done(napi, done) && !wn_arm(wn))
		napi_schedule(napi);
	return done;
}

static irqreturn_t wn_interrupt(int irq, void *data)
{
	struct winnet *wn = data;

	if (!wn->msix && !readl(wn->regs + REG_INTRSTATUS))
		return IRQ_NONE;
	wn_disarm(wn);
	napi_schedule(&wn->napi);
	return IRQ_HANDLED;
}

/*
 * Every 100 ms: the heartbeat, every peer's liveness (up, with a heartbeat
 * that moved within a second), the carrier, and a poll in case a doorbell
 * was lost.
 */
static void wn_tick(struct timer_list *t)
{
	struct winnet *wn = from_timer(wn, t, timer);
	u64 sec = wn_section(wn, wn->id), hb;
	bool any = false, alive;
	int q;

	WRITE_ONCE(*wn64(wn, sec + CTL_HEARTBEAT), READ_ONCE(*wn64(wn, sec + CTL_HEARTBEAT)) + 1);
	for (q = 0; q < wn->peers; q++) {
		if (q == wn->id)
			continue;
		hb = READ_ONCE(*wn64(wn, wn_section(wn, q) + CTL_HEARTBEAT));
		if (hb != wn->last_hb[q]) {
			wn->last_hb[q] = hb;
			wn->hb_at[q] = jiffies;
		}
		alive = READ_ONCE(*wn32(wn, wn_section(wn, q) + CTL_STATE)) == STATE_UP &&
			time_before(jiffies, wn->hb_at[q] + WN_PEER_TIMEOUT);
		if (alive != READ_ONCE(wn->alive[q]))
			netdev_info(wn->ndev, "peer %d %s\n", q, alive ? "up" : "down");
		WRITE_ONCE(wn->alive[q], alive);
		any |= alive;
	}
	if (any && !netif_carrier_ok(wn->ndev))
		netif_carrier_on(wn->ndev);
	else if (!any && netif_carrier_ok(wn->ndev))
		netif_carrier_off(wn->ndev);
	if (wn_pending(wn))
		napi_schedule(&wn->napi);
	mod_timer(&wn->timer, jiffies + WN_HEARTBEAT);
}

static int wn_up(struct net_device *ndev)
{
	struct winnet *wn = netdev_priv(ndev);
	u64 sec = wn_section(wn, wn->id), r;
	int q;

	WRITE_ONCE(*wn32(wn, sec + CTL_STATE), STATE_DOWN);
	for (q = 0; q < wn->peers; q++) {
		wn->alive[q] = false;
		wn->hb_at[q] = jiffies - WN_PEER_TIMEOUT;
		if (q == wn->id)
			continue;
		wn->seen_gen[q] = READ_ONCE(*wn32(wn, wn_section(wn, q) + CTL_GEN));
		WRITE_ONCE(*wn64(wn, wn_block(wn, wn->id, q) + PEER_RXHEAD),
			   READ_ONCE(*wn64(wn, wn_ring(wn, q, wn->id) + RING_TAIL)));
		r = wn_ring(wn, wn->id, q);
		WRITE_ONCE(*wn64(wn, r + RING_BASE), READ_ONCE(*wn64(wn, r + RING_TAIL)));
	}
	WRITE_ONCE(*wn32(wn, sec + CTL_ARMED), 0);
	WRITE_ONCE(*wn32(wn, sec + CTL_GEN), READ_ONCE(*wn32(wn, sec + CTL_GEN)) + 1);
	/* Indexes and generation before the state senders look at. */
	smp_wmb();
	WRITE_ONCE(*wn32(wn, sec + CTL_STATE), STATE_UP);
	netif_carrier_off(ndev);
	napi_enable(&wn->napi);
	if (!wn->msix)
		writel(1, wn->regs + REG_INTRMASK);
	enable_irq(wn->irq);
	mod_timer(&wn->timer, jiffies + 1);
	netif_start_queue(ndev);
	napi_schedule(&wn->napi);
	return 0;
}

static int wn_down(struct net_device *ndev)
{
	struct winnet *wn = netdev_priv(ndev);
	u64 sec = wn_section(wn, wn->id);

	netif_stop_queue(ndev);
	WRITE_ONCE(*wn32(wn, sec + CTL_ARMED), 0);
	WRITE_ONCE(*wn32(wn, sec + CTL_STATE), STATE_DOWN);
	del_timer_sync(&wn->timer);
	disable_irq(wn->irq);
	if (!wn->msix)
		writel(0, wn->regs + REG_INTRMASK);
	napi_disable(&wn->napi);
	netif_carrier_off(ndev);
	return 0;
}

static const struct net_device_ops wn_netdev_ops = {
	.ndo_open = wn_up,
	.ndo_stop = wn_down,
	.ndo_start_xmit = wn_xmit,
	.ndo_validate_addr = eth_validate_addr,
};

static int wn_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct net_device *ndev;
	struct winnet *wn;
	u8 mac[ETH_ALEN] = { 0x02, 0x50, 0x57, 0x4e, 0x00, 0x00 };
	int err;

	err = pcim_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, WN_NAME);
	if (err)
		return err;
	ndev = devm_alloc_etherdev(&pdev->dev, sizeof(*wn));
	if (!ndev)
		return -ENOMEM;
	strscpy(ndev->name, "win%d", IFNAMSIZ);
	SET_NETDEV_DEV(ndev, &pdev->dev);
	wn = netdev_priv(ndev);
	wn->pdev = pdev;
	wn->ndev = ndev;
	wn->regs = pcim_iomap(pdev, 0, 0);
	if (!wn->regs)
		return -ENOMEM;
	wn->size = pci_resource_len(pdev, 2);
	wn->mem = devm_memremap(&pdev->dev, pci_resource_start(pdev, 2), wn->size, MEMREMAP_WB);
	if (IS_ERR(wn->mem))
		return PTR_ERR(wn->mem);
	if (wn_open_window(wn)) {
		dev_err(&pdev->dev, "BAR2 (%llu bytes) is not a winnet window\n", wn->size);
		return -ENODEV;
	}
	wn->id = readl(wn->regs + REG_IVPOSITION);
	if (wn->id < 0 || wn->id >= wn->peers) {
		dev_err(&pdev->dev, "peer id %d outside the window's %d peers\n", wn->id, wn->peers);
		return -ENODEV;
	}
	pci_set_master(pdev);
	err = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX | PCI_IRQ_LEGACY);
	if (err < 0)
		return err;
	wn->msix = pdev->msix_enabled;
	wn->irq = pci_irq_vector(pdev, 0);
	err = devm_request_irq(&pdev->dev, wn->irq, wn_interrupt, wn->msix ? 0 : IRQF_SHARED,
			       WN_NAME, wn);
	if (err)
		goto free_vectors;
	disable_irq(wn->irq);
	timer_setup(&wn->timer, wn_tick, 0);
	netif_napi_add(ndev, &wn->napi, wn_poll);

	/* The peers send to this address: it cannot change (no ndo_set_mac_address). */
	mac[5] = wn->id;
	eth_hw_addr_set(ndev, mac);
	ndev->netdev_ops = &wn_netdev_ops;
	ndev->min_mtu = ETH_MIN_MTU;
	ndev->max_mtu = wn->mtu;
	ndev->mtu = wn->mtu;
	/* Shared memory: no checksums, no copies split for the device. */
	ndev->features = NETIF_F_SG | NETIF_F_HW_CSUM | NETIF_F_HIGHDMA | NETIF_F_RXCSUM;
	ndev->hw_features = ndev->features;
	pci_set_drvdata(pdev, wn);
	err = register_netdev(ndev);
	if (err)
		goto del_napi;
	netdev_info(ndev, "peer %d of %d, %llu KiB rings, mtu %u, %s\n", wn->id, wn->peers,
		    wn->data_size >> 10, wn->mtu, wn->msix ? "MSI-X" : "INTx");
	return 0;

del_napi:
	netif_napi_del(&wn->napi);
	devm_free_irq(&pdev->dev, wn->irq, wn);
free_vectors:
	pci_free_irq_vectors(pdev);
	return err;
}

static void wn_remove(struct pci_dev *pdev)
{
	struct winnet *wn = pci_get_drvdata(pdev);

	unregister_netdev(wn->ndev);
	netif_napi_del(&wn->napi);
	devm_free_irq(&pdev->dev, wn->irq, wn);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id wn_ids[] = {
	{ PCI_DEVICE_SUB(0x1af4, 0x1110, 0x1af4, 0x1101) },
	{ }
};
MODULE_DEVICE_TABLE(pci, wn_ids);

static struct pci_driver wn_driver = {
	.name = WN_NAME,
	.id_table = wn_ids,
	.probe = wn_probe,
	.remove = wn_remove,
};
module_pci_driver(wn_driver);

MODULE_DESCRIPTION("popvmm window network: Ethernet over shared-memory rings between kernels");
MODULE_LICENSE("GPL");

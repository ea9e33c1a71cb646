package vtty

// ring is a fixed-size byte ring: every operation costs what it copies,
// never the ring's size.
type ring struct {
	buf  []byte
	head int // index of the oldest byte
	n    int // bytes held
}

func newRing(size int) ring { return ring{buf: make([]byte, size)} }

// push appends what fits of p and returns how many bytes it took.
func (r *ring) push(p []byte) int {
	k := min(len(p), len(r.buf)-r.n)
	tail := (r.head + r.n) % len(r.buf)
	c := copy(r.buf[tail:], p[:k])
	copy(r.buf, p[c:k])
	r.n += k
	return k
}

// overwrite appends p, dropping the oldest bytes to make room.
func (r *ring) overwrite(p []byte) {
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.head, r.n = 0, len(r.buf)
		return
	}
	if drop := r.n + len(p) - len(r.buf); drop > 0 {
		r.head = (r.head + drop) % len(r.buf)
		r.n -= drop
	}
	r.push(p)
}

// pop moves up to len(p) of the oldest bytes into p and returns how many.
func (r *ring) pop(p []byte) int {
	k := min(len(p), r.n)
	c := copy(p[:k], r.buf[r.head:])
	copy(p[c:k], r.buf)
	r.head = (r.head + k) % len(r.buf)
	r.n -= k
	return k
}

// bytes returns a copy of what the ring holds, oldest first.
func (r *ring) bytes() []byte {
	out := make([]byte, r.n)
	c := copy(out, r.buf[r.head:])
	copy(out[c:], r.buf)
	return out
}

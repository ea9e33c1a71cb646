package termfilter

import "io"

// CRLFWriter ends every line it passes with CR LF: a terminal in raw mode
// moves down on a bare line feed without returning to the left margin, so
// lines written to it as Go writes them (\n) would print as a staircase. A
// CR LF already there stays as it is, even split across writes.
type CRLFWriter struct {
	w      io.Writer
	lastCR bool
	buf    []byte
}

// CRLF returns a CRLFWriter writing to w.
func CRLF(w io.Writer) *CRLFWriter { return &CRLFWriter{w: w} }

// Write passes p with each bare LF made CR LF; it reports len(p) unless
// the underlying writer fails.
func (c *CRLFWriter) Write(p []byte) (int, error) {
	c.buf = c.buf[:0]
	for _, b := range p {
		if b == '\n' && !c.lastCR {
			c.buf = append(c.buf, '\r')
		}
		c.buf = append(c.buf, b)
		c.lastCR = b == '\r'
	}
	if _, err := c.w.Write(c.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

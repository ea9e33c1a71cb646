package ipi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The ivshmem-server protocol (QEMU docs/specs/ivshmem-spec): the server
// sends the client a stream of messages, each a little-endian int64 with at
// most one file descriptor attached (SCM_RIGHTS):
//
//	version 0, no fd
//	the client's own peer id, no fd
//	-1 with the shared memory fd
//	for every other peer, for every vector: that peer's id with its eventfd
//	for every vector: the client's own id with its own eventfd
//
// Later, to every client: a new peer's id with its eventfds (one message per
// vector), or a departed peer's id without fd. Clients send nothing.

// ProtocolVersion is the only version the protocol has.
const ProtocolVersion = 0

// shmID marks the message carrying the shared memory fd.
const shmID = -1

// sendTimeout bounds one send, so a peer that stops reading cannot stall
// the server (it is disconnected instead).
const sendTimeout = 5 * time.Second

// sendMsg sends one protocol message.
func sendMsg(c *net.UnixConn, v int64, fd int) error {
	c.SetWriteDeadline(time.Now().Add(sendTimeout))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(v))
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, oobn, err := c.WriteMsgUnix(b[:], oob, nil)
	if err != nil {
		return err
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("short protocol write (%d+%d bytes)", n, oobn)
	}
	return nil
}

// errProtocol marks a malformed message from the other side.
var errProtocol = errors.New("ivshmem protocol error")

// recvMsg reads one protocol message; fd is -1 when none came. A message
// with more than one fd is a protocol error (the extra fds are closed).
func recvMsg(c *net.UnixConn) (v int64, fd int, err error) {
	var b [8]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
	if err != nil {
		return 0, -1, err
	}
	fd = -1
	if oobn > 0 {
		fds, err := parseRights(oob[:oobn])
		if err != nil {
			return 0, -1, err
		}
		if len(fds) > 1 {
			for _, f := range fds {
				unix.Close(f)
			}
			return 0, -1, fmt.Errorf("%w: %d fds in one message", errProtocol, len(fds))
		}
		if len(fds) == 1 {
			fd = fds[0]
		}
	}
	if n == 0 && fd < 0 {
		return 0, -1, os.ErrClosed // EOF
	}
	if n != len(b) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return 0, -1, fmt.Errorf("%w: %d-byte message", errProtocol, n)
	}
	return int64(binary.LittleEndian.Uint64(b[:])), fd, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errProtocol, err)
	}
	var fds []int
	for _, m := range msgs {
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, r...)
	}
	return fds, nil
}

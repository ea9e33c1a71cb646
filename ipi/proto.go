package ipi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// MaxVectors bounds the interrupt vectors per peer (the window device's
// MSI-X table).
const MaxVectors = 64

// maxPeerID bounds peer ids: the doorbell register holds the peer in 16 bits.
const maxPeerID = 1<<16 - 1

// sendTimeout bounds one send, so a peer that stops reading cannot keep
// its messages forever (it is disconnected instead).
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

// ErrProtocol marks a malformed or unexpected message from the other side
// (the error says which).
var ErrProtocol = errors.New("ivshmem protocol error")

// recvMsg reads one protocol message; fd is -1 when none came, and the
// error io.EOF when the other side closed the connection. A message
// with more than one fd, or with more than its control buffer holds, is a
// protocol error (the fds that came are closed).
func recvMsg(c *net.UnixConn) (v int64, fd int, err error) {
	var b [8]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(b[:], oob)
	if errors.Is(err, io.EOF) {
		return 0, -1, io.EOF
	}
	if err != nil {
		return 0, -1, err
	}
	fd = -1
	if oobn > 0 {
		fds, err := parseRights(oob[:oobn])
		if err != nil {
			return 0, -1, err
		}
		if len(fds) > 1 || flags&unix.MSG_CTRUNC != 0 {
			for _, f := range fds {
				unix.Close(f)
			}
			return 0, -1, fmt.Errorf("%w: more than one fd in one message (%d came)", ErrProtocol, len(fds))
		}
		if len(fds) == 1 {
			fd = fds[0]
		}
	} else if flags&unix.MSG_CTRUNC != 0 {
		return 0, -1, fmt.Errorf("%w: truncated control message", ErrProtocol)
	}
	if n == 0 && fd < 0 {
		return 0, -1, io.EOF
	}
	if n != len(b) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return 0, -1, fmt.Errorf("%w: %d-byte message", ErrProtocol, n)
	}
	return int64(binary.LittleEndian.Uint64(b[:])), fd, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
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

// peekValue returns the value of the next message when one is already
// waiting, without taking it (nor its fd) off the socket.
func peekValue(c *net.UnixConn) (int64, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var b [8]byte
	n := 0
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true // never wait
	})
	if err != nil || rerr != nil || n != len(b) {
		return 0, false
	}
	return int64(binary.LittleEndian.Uint64(b[:])), true
}

// checkEventfd makes sure a peer's fd is an eventfd: ringing writes 8 bytes
// to it, which must never land in a file or socket a server slipped in.
// Without /proc there is nothing to check against, and the fd is taken.
func checkEventfd(fd int) error {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil || target == "anon_inode:[eventfd]" {
		return nil
	}
	return fmt.Errorf("%w: a peer's fd is %s, not an eventfd", ErrProtocol, target)
}

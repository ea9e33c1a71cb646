package ipi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Server hands the window and every peer's eventfds to host peers that
// connect to its Unix socket (the ivshmem-server protocol).
type Server struct {
	win      *Window
	vectors  int
	firstID  int // ids below it are reserved (the cluster's kernels)
	maxPeers int
	log      *slog.Logger

	mu    sync.Mutex
	peers map[int]*serverPeer
}

type serverPeer struct {
	id   int
	conn *net.UnixConn
	fds  []int // one eventfd per vector
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// Vectors is the number of interrupt vectors (eventfds) per peer, 1-64.
	Vectors int
	// FirstID is the lowest id given to a host peer; the ids below are the
	// kernels' (their index in cluster.toml).
	FirstID int
	// MaxPeers bounds the number of host peers connected at once.
	MaxPeers int
}

// NewServer makes a server for win.
func NewServer(win *Window, cfg ServerConfig, log *slog.Logger) (*Server, error) {
	if cfg.Vectors < 1 || cfg.Vectors > 64 {
		return nil, fmt.Errorf("ivshmem server: %d vectors, want 1-64", cfg.Vectors)
	}
	if cfg.MaxPeers < 1 || cfg.FirstID < 0 || cfg.FirstID+cfg.MaxPeers > 1<<16 {
		return nil, fmt.Errorf("ivshmem server: peer ids %d+%d out of range", cfg.FirstID, cfg.MaxPeers)
	}
	return &Server{win: win, vectors: cfg.Vectors, firstID: cfg.FirstID, maxPeers: cfg.MaxPeers,
		log: log, peers: map[int]*serverPeer{}}, nil
}

// Serve accepts peers on ln until ctx ends, then disconnects them all and
// closes every eventfd it made.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		for _, p := range s.peers {
			p.conn.Close() // the peer's goroutine removes it
		}
		s.mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ivshmem server accept: %w", err)
		}
		p, err := s.join(c)
		if err != nil {
			s.log.Warn("host peer refused", "err", err)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watch(p)
		}()
	}
}

// join gives the new client its id, the window, every peer's eventfds and
// its own, and announces it to the others.
func (s *Server) join(c *net.UnixConn) (*serverPeer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := -1
	for i := s.firstID; i < s.firstID+s.maxPeers; i++ {
		if _, taken := s.peers[i]; !taken {
			id = i
			break
		}
	}
	if id < 0 {
		return nil, fmt.Errorf("all %d host peer ids are in use", s.maxPeers)
	}
	p := &serverPeer{id: id, conn: c}
	for range s.vectors {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			p.closeFds()
			return nil, os.NewSyscallError("eventfd", err)
		}
		p.fds = append(p.fds, fd)
	}
	err := func() error {
		if err := sendMsg(c, ProtocolVersion, -1); err != nil {
			return err
		}
		if err := sendMsg(c, int64(id), -1); err != nil {
			return err
		}
		if err := sendMsg(c, shmID, s.win.Fd()); err != nil {
			return err
		}
		for _, o := range s.peers {
			for _, fd := range o.fds {
				if err := sendMsg(c, int64(o.id), fd); err != nil {
					return err
				}
			}
		}
		for _, fd := range p.fds {
			if err := sendMsg(c, int64(id), fd); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		p.closeFds()
		return nil, fmt.Errorf("greet peer %d: %w", id, err)
	}
	for _, o := range s.peers {
		for _, fd := range p.fds {
			if err := sendMsg(o.conn, int64(id), fd); err != nil {
				s.log.Debug("announce failed; that peer is going", "to", o.id, "err", err)
				break
			}
		}
	}
	s.peers[id] = p
	s.log.Info("host peer joined", "peer", id)
	return p, nil
}

// watch waits for the peer to go (clients send nothing; anything they send
// is a protocol violation and disconnects them), then removes it and
// announces its departure. Its id is free again only after that.
func (s *Server) watch(p *serverPeer) {
	var b [64]byte
	n, err := p.conn.Read(b[:])
	switch {
	case err == nil && n > 0:
		s.log.Warn("host peer sent data; disconnecting it", "peer", p.id, "bytes", n)
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
		s.log.Debug("host peer connection error", "peer", p.id, "err", err)
	}
	p.conn.Close()
	s.mu.Lock()
	delete(s.peers, p.id)
	for _, o := range s.peers {
		if err := sendMsg(o.conn, int64(p.id), -1); err != nil {
			s.log.Debug("departure notice failed", "to", o.id, "err", err)
		}
	}
	s.mu.Unlock()
	p.closeFds()
	s.log.Info("host peer left", "peer", p.id)
}

func (p *serverPeer) closeFds() {
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds = nil
}

// Peers lists the ids of the connected host peers.
func (s *Server) Peers() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []int
	for id := range s.peers {
		ids = append(ids, id)
	}
	return ids
}

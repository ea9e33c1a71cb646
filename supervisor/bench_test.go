package supervisor_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkStatusCall is one `popvmm status` round trip: connect, request,
// JSON reply for a two-kernel cluster, close.
func BenchmarkStatusCall(b *testing.B) {
	cl := testCluster(nil, b.TempDir(), "bench")
	c, _ := startB(b, cl)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Status(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnixEchoReference is the floor for BenchmarkStatusCall: the same
// connect, one request line and a reply of the same size from a server that
// does no work, over a plain Unix socket.
func BenchmarkUnixEchoReference(b *testing.B) {
	cl := testCluster(nil, b.TempDir(), "bench")
	c, _ := startB(b, cl)
	st, err := c.Status(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	reply, _ := json.Marshal(st)
	reply = append(reply, '\n')
	sock := filepath.Join(b.TempDir(), "echo.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if _, err := bufio.NewReader(conn).ReadBytes('\n'); err == nil {
					conn.Write(reply)
				}
			}()
		}
	}()
	req := []byte(`{"op":"status"}` + "\n")
	b.ResetTimer()
	for b.Loop() {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		conn.Write(req)
		line, err := bufio.NewReader(conn).ReadBytes('\n')
		conn.Close()
		if err != nil || !bytes.Equal(line, reply) {
			b.Fatal(err)
		}
	}
}

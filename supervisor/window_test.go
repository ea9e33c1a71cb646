package supervisor_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/supervisor"
)

// TestWindowMessaging: a host-process agent joins the running cluster's
// window under its own name; popvmm's node pings it, asks for info and
// lists it; when it leaves, requests to it are refused.
func TestWindowMessaging(t *testing.T) {
	cl := testCluster(t, t.TempDir(), "demo")
	c, _ := start(t, cl)
	sock := filepath.Join(cl.RunDir, supervisor.WindowSocketName)

	call := func(action, name string) (*supervisor.Response, error) {
		return c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: action, Name: name})
	}
	// No agent yet: the kernel exists but is not on the window.
	_, err := call(supervisor.ActionPing, "primary")
	var oe *supervisor.OpError
	if !errors.As(err, &oe) || oe.Code != supervisor.CodeState || !strings.Contains(oe.Message, "not on the window") {
		t.Errorf("ping before any agent = %v", err)
	}
	if _, err := call(supervisor.ActionPing, "nobody"); !errors.As(err, &oe) || oe.Code != supervisor.CodeNotFound {
		t.Errorf("ping unknown name = %v, want not_found", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	client, err := ipi.Dial(ctxT(t), sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	node, err := msg.Join(client.Mem, client.ID, "hostagent", ipi.Bell{C: client}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	agent.Serve(node, "hostagent", "")
	ran := make(chan struct{})
	go func() { node.Run(ctx); close(ran) }()

	resp, err := call(supervisor.ActionPing, "hostagent")
	if err != nil || resp.Window.Peer != client.ID || resp.Window.RTTns <= 0 {
		t.Fatalf("ping = %+v, %v", resp, err)
	}
	resp, err = call(supervisor.ActionInfo, "hostagent")
	if err != nil || resp.Window.Info.Name != "hostagent" || resp.Window.Info.Release == "" || resp.Window.Info.MemTotal == 0 {
		t.Fatalf("info = %+v, %v", resp, err)
	}
	resp, err = call(supervisor.ActionStat, "")
	if err != nil || len(resp.Window.Stat.Peers) != 2 || resp.Window.Stat.Node.Received < 2 {
		t.Fatalf("stat = %+v, %v", resp.Window.Stat, err)
	}
	for _, p := range resp.Window.Stat.Peers {
		if p.Name == "hostagent" && (p.Sent != 2 || p.Received != 2) {
			t.Errorf("per-peer counters for hostagent: sent %d received %d, want 2 and 2", p.Sent, p.Received)
		}
	}

	cancel()
	<-ran
	client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := call(supervisor.ActionPing, "hostagent")
		if errors.As(err, &oe) && oe.Code == supervisor.CodeNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping after the agent left = %v", err)
		}
		time.Sleep(10 * time.Millisecond) // the departure notice travels through the server
	}
}

// TestWindowHostPeerIDReuse: a host peer leaves and the next one joins
// under the same id at once, round after round. popvmm records each
// departure for the incarnation that left only, so every new holder of
// the id stays online in the peer table and answers pings.
func TestWindowHostPeerIDReuse(t *testing.T) {
	cl := testCluster(t, t.TempDir(), "demo")
	c, _ := start(t, cl)
	sock := filepath.Join(cl.RunDir, supervisor.WindowSocketName)

	// A bystander host peer hears each departure once the server has
	// freed the id, so the next join gets that id again.
	bystander, err := ipi.Dial(ctxT(t), sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close()
	lastID := -1
	for i := range 20 {
		client, err := ipi.Dial(ctxT(t), sock, 1)
		if err != nil {
			t.Fatal(err)
		}
		node, err := msg.Join(client.Mem, client.ID, "hostagent", ipi.Bell{C: client}, msg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		agent.Serve(node, "hostagent", "")
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{})
		go func() { node.Run(ctx); close(ran) }()

		if i > 0 && client.ID != lastID {
			t.Fatalf("round %d: id %d, not the freed %d", i, client.ID, lastID)
		}
		resp, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionPing, Name: "hostagent"})
		if err != nil || resp.Window.Peer != client.ID {
			t.Errorf("round %d: ping the new holder of id %d = %+v, %v", i, client.ID, resp, err)
		}
		if st := node.PeerState(client.ID); st != msg.StateOnline {
			t.Errorf("round %d: peer %d is %v in the peer table, want online", i, client.ID, st)
		}
		lastID = client.ID
		cancel()
		<-ran
		client.Close()
		waitDeparture(t, bystander, lastID)
	}
}

func waitDeparture(t *testing.T, c *ipi.Client, id int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-c.Events():
			if !ok {
				t.Fatalf("bystander's connection ended: %v", c.Err())
			}
			if e.ID == id && !e.Joined {
				return
			}
		case <-deadline:
			t.Fatalf("departure of peer %d not heard within 10s", id)
		}
	}
}

// TestWindowHostPeerCannotPoseAsKernel: a host process joins the window
// calling itself "primary", as `popagent -name primary` would. It gets a
// host peer id (after the kernels'), `msg ping/info primary` still address
// kernel primary's peer id 0 (not on the window: its VM is not running) and
// never the host process, the peer table flags it and popvmm marks it
// offline, so no peer reaches it under that name either.
func TestWindowHostPeerCannotPoseAsKernel(t *testing.T) {
	cl := testCluster(t, t.TempDir(), "demo")
	c, _ := start(t, cl)
	sock := filepath.Join(cl.RunDir, supervisor.WindowSocketName)

	client, err := ipi.Dial(ctxT(t), sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if client.ID < len(cl.Kernels) {
		t.Fatalf("host peer got id %d, one of the kernels' (0..%d)", client.ID, len(cl.Kernels)-1)
	}
	node, err := msg.Join(client.Mem, client.ID, "primary", ipi.Bell{C: client}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	agent.Serve(node, "primary", "")
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { node.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()

	for _, action := range []string{supervisor.ActionPing, supervisor.ActionInfo} {
		resp, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: action, Name: "primary"})
		var oe *supervisor.OpError
		if err == nil {
			t.Errorf("msg %s primary answered by peer %d (the host process is %d), want a refusal: kernel primary is not on the window", action, resp.Window.Peer, client.ID)
		} else if !errors.As(err, &oe) || oe.Code != supervisor.CodeState || !strings.Contains(oe.Message, "peer 0") {
			t.Errorf("msg %s primary = %v, want bad_state naming peer 0", action, err)
		}
	}
	// popvmm notices the claim at its next heartbeat and takes the peer
	// off the table.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionStat})
		if err != nil {
			t.Fatal(err)
		}
		var me *msg.PeerInfo
		for i, p := range resp.Window.Stat.Peers {
			if p.ID == client.ID {
				me = &resp.Window.Stat.Peers[i]
			}
		}
		if me == nil || !me.Impostor {
			t.Fatalf("peer table = %+v, want peer %d flagged as an impostor", resp.Window.Stat.Peers, client.ID)
		}
		if me.State == msg.StateOffline.String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("impostor peer %d still %s after 10s", client.ID, me.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var b strings.Builder
	resp, _ := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionStat})
	supervisor.WriteWindowStat(&b, resp.Window.Stat)
	if !strings.Contains(b.String(), "not kernel primary") {
		t.Errorf("msg stat table does not say the peer is not kernel primary:\n%s", b.String())
	}
}

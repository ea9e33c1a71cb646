package supervisor

import (
	"context"
	"testing"
	"time"
)

// TestLockUp: a second `up` under the same run root waits (and says so)
// until the first lets go; one that gives up (its context ends) leaves
// nothing held; unlock twice is harmless; another run root is not held up.
func TestLockUp(t *testing.T) {
	root := t.TempDir()
	unlock1, err := LockUp(context.Background(), root, func() { t.Error("the first lock waited") })
	if err != nil {
		t.Fatal(err)
	}
	if u, err := LockUp(context.Background(), t.TempDir(), func() { t.Error("another run root waited") }); err != nil {
		t.Fatal(err)
	} else {
		u()
	}

	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan struct{})
	gaveUp := make(chan error)
	go func() {
		_, err := LockUp(ctx, root, func() { close(waited) })
		gaveUp <- err
	}()
	<-waited
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("a lock whose context ended was taken")
	}

	got := make(chan func())
	waited2 := make(chan struct{})
	go func() {
		u, err := LockUp(context.Background(), root, func() { close(waited2) })
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	<-waited2
	select {
	case <-got:
		t.Fatal("the second lock was taken while the first was held")
	default:
	}
	unlock1()
	unlock1()
	var unlock2 func()
	select {
	case unlock2 = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the second lock was not taken within 10s of the first's release")
	}
	unlock2()
	// The waiter that gave up may still take the lock for an instant
	// (its flock was already queued) before it lets it go: the next
	// lock may wait for that, not for longer.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel3()
	u, err := LockUp(ctx3, root, nil)
	if err != nil {
		t.Fatalf("a released lock was not taken within 10s (the abandoned waiter kept it?): %v", err)
	}
	u()
}

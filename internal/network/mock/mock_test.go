package mock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"atelier/internal/store"
)

const id = "abcdefghijkl"

func TestAttachDetach(t *testing.T) {
	ctx := context.Background()
	n := New()
	link, err := n.Attach(ctx, id, store.Lease{IP: "172.16.0.10", MAC: "06:00:ac:10:00:0a"})
	if err != nil || link != "tap-abcdefgh" {
		t.Fatalf("Attach = %q, %v; want tap-abcdefgh", link, err)
	}
	// Re-attaching reuses the link with the new lease.
	if link, err = n.Attach(ctx, id, store.Lease{IP: "172.16.0.11", MAC: "06:00:ac:10:00:0b"}); err != nil || link != "tap-abcdefgh" {
		t.Fatalf("re-Attach = %q, %v", link, err)
	}
	if got := n.Links()[id]; got != (Link{Name: "tap-abcdefgh", IP: "172.16.0.11", MAC: "06:00:ac:10:00:0b"}) {
		t.Fatalf("link = %+v", got)
	}
	if err := n.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	if len(n.Links()) != 0 || len(n.LinkIDs()) != 0 {
		t.Fatal("link left after detach")
	}
	if err := n.Detach(ctx, id); err != nil {
		t.Fatalf("detach of an absent link = %v, want success", err)
	}
	if _, err := n.Attach(ctx, "bad", store.Lease{}); err == nil {
		t.Fatal("attach accepted an invalid id")
	}
}

func TestLinkName(t *testing.T) {
	for in, want := range map[string]string{id: "tap-abcdefgh", "abc": "tap-abc", "": "tap-"} {
		if got := LinkName(in); got != want {
			t.Errorf("LinkName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFailNext(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	n := New()
	n.FailNext(OpAttach, boom)
	if _, err := n.Attach(ctx, id, store.Lease{}); !errors.Is(err, boom) {
		t.Fatalf("Attach = %v", err)
	}
	if len(n.Links()) != 0 {
		t.Fatal("failed attach left a link")
	}
	if _, err := n.Attach(ctx, id, store.Lease{}); err != nil {
		t.Fatal(err)
	}
	n.FailNext(OpDetach, boom)
	if err := n.Detach(ctx, id); !errors.Is(err, boom) {
		t.Fatalf("Detach = %v", err)
	}
	if len(n.Links()) != 1 {
		t.Fatal("failed detach removed the link")
	}
}

func TestConcurrentUse(t *testing.T) {
	n := New()
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			sid := fmt.Sprintf("sandbox%05d", i)
			if _, err := n.Attach(context.Background(), sid, store.Lease{}); err != nil {
				t.Error(err)
			}
			if i%4 == 0 {
				_ = n.Detach(context.Background(), sid)
			}
		})
	}
	wg.Wait()
	if got := len(n.LinkIDs()); got != 30 {
		t.Fatalf("%d links, want 30", got)
	}
}

package server

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// Prebuild recovery on a shared store: a replica starting does not settle
// the builds others run; the leader settles only a build no replica has
// touched for the lease's TTL (its replica died), and a cancel on a replica
// that does not run the build is refused while it is alive elsewhere.
func TestPrebuildRecoveryIsReplicaAware(t *testing.T) {
	url := testenv.PostgresDB(t)
	ctx := context.Background()
	other, err := store.Open(ctx, t.TempDir(), store.WithDatabaseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.EnsureUser(ctx, store.User{ID: "u1", Login: "u1"}); err != nil {
		t.Fatal(err)
	}
	building := func(name string) string {
		w, err := other.CreateWorkspace(ctx, store.Workspace{OwnerID: "u1", Name: name, Config: json.RawMessage(`{}`)}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := other.BeginPrebuild(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		return w.ID
	}
	dead, live := building("dead"), building("live")
	// The live build's replica touches it, as Prebuilds.Touch does.
	const ttl = 1500 * time.Millisecond
	tctx, stopTouch := context.WithCancel(ctx)
	touched := make(chan struct{})
	go func() {
		defer close(touched)
		for tctx.Err() == nil {
			if _, err := other.UpdatePrebuild(tctx, live, func(*store.Prebuild) {}); err != nil && tctx.Err() == nil {
				t.Error(err)
			}
			select {
			case <-tctx.Done():
			case <-time.After(ttl / 4):
			}
		}
	}()
	defer func() { stopTouch(); <-touched }()
	status := func(id string) store.Prebuild {
		pb, err := other.GetPrebuild(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return pb
	}

	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	b, _, _ := replica(t, url, drv, ttl)
	waitFor(t, 5*time.Second, "B leads", b.Leading)
	time.Sleep(200 * time.Millisecond) // B's first passes
	if pb := status(live); pb.Status != store.PrebuildBuilding {
		t.Fatalf("B settled a live build at its start: %s %q", pb.Status, pb.Error)
	}
	if _, err := b.Prebuilds.Cancel(ctx, live); !errors.Is(err, store.ErrBusy) || !strings.Contains(err.Error(), "another manager replica") {
		t.Errorf("cancel on a replica not running the build: %v, want busy (it runs elsewhere)", err)
	}
	waitFor(t, 3*ttl, "the leader settles the dead replica's build", func() bool { return status(dead).Status == store.PrebuildFailed })
	if pb := status(dead); !strings.Contains(pb.Error, "interrupted") {
		t.Errorf("settled build: %+v", pb)
	}
	time.Sleep(ttl)
	if pb := status(live); pb.Status != store.PrebuildBuilding {
		t.Fatalf("the leader settled a build another replica keeps alive: %s %q", pb.Status, pb.Error)
	}
	// Once its replica stops touching it, it is the leader's to settle.
	stopTouch()
	<-touched
	waitFor(t, 3*ttl, "the leader settles the build once its replica stops", func() bool { return status(live).Status == store.PrebuildFailed })
}

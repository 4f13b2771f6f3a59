package mock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"atelier/internal/sandbox"
)

const id = "abcdefghijkl"

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	r := New()
	inst := sandbox.Instance{ID: id, Vcpus: 2, MemoryMB: 2048, IP: "172.16.0.10", DNS: []string{"8.8.8.8"}}
	if err := r.Boot(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := r.Boot(ctx, inst); err == nil {
		t.Fatal("second boot of a running instance succeeded")
	}
	if alive, err := r.Alive(ctx, id); err != nil || !alive {
		t.Fatalf("Alive = %v, %v", alive, err)
	}
	if got, ok := r.Instance(id); !ok || got.IP != inst.IP {
		t.Fatalf("Instance = %+v, %v", got, ok)
	}
	if err := r.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if alive, _ := r.Alive(ctx, id); alive {
		t.Fatal("alive after stop")
	}
	if err := r.Boot(ctx, inst); err != nil {
		t.Fatalf("boot after stop: %v", err)
	}
	if err := r.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if len(r.Instances()) != 0 {
		t.Fatalf("instances after destroy: %v", r.Instances())
	}
	// Already gone is success.
	if err := r.Stop(ctx, "unknownid000"); err != nil {
		t.Fatal(err)
	}
	if err := r.Destroy(ctx, "unknownid000"); err != nil {
		t.Fatal(err)
	}
	if err := r.Boot(ctx, sandbox.Instance{ID: "../../etc"}); err == nil {
		t.Fatal("boot accepted an invalid id")
	}
}

func TestFailNextIsOneShot(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	tests := []struct {
		op   string
		call func(r *Runtime) error
	}{
		{OpBoot, func(r *Runtime) error { return r.Boot(ctx, sandbox.Instance{ID: id}) }},
		{OpStop, func(r *Runtime) error { return r.Stop(ctx, id) }},
		{OpDestroy, func(r *Runtime) error { return r.Destroy(ctx, id) }},
		{OpAlive, func(r *Runtime) error { _, err := r.Alive(ctx, id); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			r := New()
			r.FailNext(tc.op, boom)
			if err := tc.call(r); !errors.Is(err, boom) {
				t.Fatalf("first call = %v, want boom", err)
			}
			if err := tc.call(r); err != nil {
				t.Fatalf("second call = %v, want success", err)
			}
		})
	}
}

func TestFailedBootLeavesNothing(t *testing.T) {
	r := New()
	r.FailNext(OpBoot, errors.New("boom"))
	_ = r.Boot(context.Background(), sandbox.Instance{ID: id})
	if len(r.Instances()) != 0 {
		t.Fatal("failed boot recorded an instance")
	}
}

func TestBlockNext(t *testing.T) {
	r := New()
	entered, release := r.BlockNext(OpBoot)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Boot(ctx, sandbox.Instance{ID: id}) }()
	<-entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled boot = %v", err)
	}
	if len(r.Instances()) != 0 {
		t.Fatal("cancelled boot recorded an instance")
	}
	release()
	release() // idempotent

	entered, release = r.BlockNext(OpBoot)
	go func() { errc <- r.Boot(context.Background(), sandbox.Instance{ID: id}) }()
	<-entered
	release()
	if err := <-errc; err != nil {
		t.Fatalf("released boot = %v", err)
	}
	if !slices.Equal(r.Instances(), []string{id}) {
		t.Fatalf("instances = %v", r.Instances())
	}
}

func TestConcurrentUse(t *testing.T) {
	r := New()
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			sid := fmt.Sprintf("sandbox%05d", i)
			if err := r.Boot(ctx, sandbox.Instance{ID: sid}); err != nil {
				t.Error(err)
			}
			_, _ = r.Alive(ctx, sid)
			if i%2 == 0 {
				_ = r.Destroy(ctx, sid)
			}
		})
	}
	wg.Wait()
	if n := len(r.Instances()); n != 25 {
		t.Fatalf("%d instances, want 25", n)
	}
}

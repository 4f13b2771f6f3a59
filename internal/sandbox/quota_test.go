package sandbox_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"atelier/internal/config"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// createMany runs n creates for owner at once and waits for the accepted
// ones to run; it returns those and the quota each refusal named.
func (e *env) createMany(t *testing.T, owner string, n int, req sandbox.CreateRequest) ([]store.Sandbox, map[string]int) {
	t.Helper()
	ctx := ctxT(t)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ok      []store.Sandbox
		refused = map[string]int{}
	)
	req.OwnerID = owner
	for range n {
		wg.Go(func() {
			sb, err := e.svc.Create(ctx, req)
			if err == nil {
				sb, err = e.svc.Wait(ctx, sb.ID)
			}
			mu.Lock()
			defer mu.Unlock()
			var qe *store.QuotaError
			switch {
			case err == nil && sb.Status == store.StatusRunning:
				ok = append(ok, sb)
			case errors.As(err, &qe):
				refused[qe.Quota]++
			default:
				t.Errorf("create: %+v, %v", sb, err)
			}
		})
	}
	wg.Wait()
	return ok, refused
}

// TestQuotasHoldAgainstAHostileCoTenant is one user trying to take the
// whole host with concurrent creates: the quotas stop them exactly at
// their share, and another user can still create.
func TestQuotasHoldAgainstAHostileCoTenant(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Server.MaxSandboxes = 20
		c.Quotas = config.Quotas{RunningPerUser: 3, SandboxesPerUser: 5}
	})
	e.run(t)
	ctx := ctxT(t)
	got, refused := e.createMany(t, "mallory", 15, sandbox.CreateRequest{})
	if len(got) != 3 || refused[store.QuotaRunning] != 12 {
		t.Fatalf("%d created, refused %v; want 3 and 12 by the running quota", len(got), refused)
	}
	// A stopped sandbox frees a running slot but still counts as a sandbox.
	if _, err := e.svc.Stop(ctx, got[0].ID); err != nil {
		t.Fatal(err)
	}
	if more, refused := e.createMany(t, "mallory", 3, sandbox.CreateRequest{}); len(more) != 1 || refused[store.QuotaRunning] != 2 {
		t.Fatalf("after a stop: %d created, refused %v; want 1 and 2 by the running quota", len(more), refused)
	}
	if _, err := e.svc.Stop(ctx, got[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := e.createOne(ctx, "mallory"); err != nil {
		t.Fatalf("fifth sandbox: %v", err)
	}
	// Five sandboxes, three running: the sandboxes quota, which no stop
	// can fix, is the one reported.
	if err := e.createOne(ctx, "mallory"); !isQuota(err, store.QuotaSandboxes) {
		t.Fatalf("sixth sandbox: %v, want the sandboxes quota", err)
	}
	// Starting a stopped one again would make four running.
	if _, err := e.svc.Start(ctx, got[0].ID); !isQuota(err, store.QuotaRunning) {
		t.Fatalf("start past the running quota: %v", err)
	}
	if got := e.status(t, got[0].ID); got.Status != store.StatusStopped {
		t.Fatalf("refused start left the sandbox %s", got.Status)
	}
	// Alice is not held back by Mallory.
	if alice, refused := e.createMany(t, "alice", 3, sandbox.CreateRequest{}); len(alice) != 3 {
		t.Fatalf("alice: %d created, refused %v", len(alice), refused)
	}
	// Destroying gives the slot back.
	if err := e.svc.Destroy(ctx, got[2].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(ctx, got[0].ID); err != nil {
		t.Fatalf("start after a destroy freed a slot: %v", err)
	}
}

func (e *env) createOne(ctx context.Context, owner string) error {
	_, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: owner})
	return err
}

func isQuota(err error, quota string) bool {
	var qe *store.QuotaError
	return errors.As(err, &qe) && qe.Quota == quota && errors.Is(err, store.ErrQuota)
}

func TestDiskQuotaCountsImageSizes(t *testing.T) {
	const gi = int64(1) << 30
	e := newEnv(t, func(c *config.Config) { c.Quotas = config.Quotas{DiskGBPerUser: 12} })
	e.vol.SetImageSize("dev-base", 5*gi)
	e.vol.SetImageSize("big", 7*gi)
	e.run(t)
	ctx := ctxT(t)
	got, refused := e.createMany(t, "mallory", 6, sandbox.CreateRequest{})
	if len(got) != 2 || refused[store.QuotaDisk] != 4 {
		t.Fatalf("%d created, refused %v; want 2 and 4 by the disk quota", len(got), refused)
	}
	for _, sb := range got {
		if sb.DiskBytes != 5*gi {
			t.Fatalf("disk of %s = %d, want %d", sb.ID, sb.DiskBytes, 5*gi)
		}
	}
	// 10 GiB used: the 7 GiB image does not fit; a stopped sandbox still holds its disk.
	if _, err := e.svc.Stop(ctx, got[0].ID); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: "mallory", Image: "big"})
	var qe *store.QuotaError
	if !errors.As(err, &qe) || qe.Quota != store.QuotaDisk || qe.Used != 10*gi || qe.Limit != 12*gi || qe.Requested != 7*gi {
		t.Fatalf("big image: %v (%+v)", err, qe)
	}
	// An image the host does not have is the request's fault, and nothing is inserted.
	_, err = e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: "mallory", Image: "nosuch"})
	var fe *sandbox.FieldError
	if !errors.As(err, &fe) || fe.Field != "image" {
		t.Fatalf("unknown image: %v, want a field error on image", err)
	}
	if n, _ := e.st.CountSandboxes(ctx); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
	if err := e.svc.Destroy(ctx, got[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: "mallory", Image: "big"}); err != nil {
		t.Fatalf("big image after a destroy freed 5 GiB: %v", err)
	}
}

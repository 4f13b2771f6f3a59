package sandbox_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"atelier/internal/store"
)

// On a shared store the reconciler finishes a create whose replica died
// (its row stale) when it can, and reverts it as one manager does when
// the journal says it must not: adopted once already, a prebuild's build,
// a workspace sandbox that died before its volume step. A single manager
// always reverts.
func TestReconcileAdoptsADeadReplicasCreate(t *testing.T) {
	cases := []struct {
		name      string
		shared    bool
		workspace bool
		build     bool
		pooled    bool
		journal   []store.Op // the dead replica's steps
		adopted   bool
	}{
		{name: "died after the lease", shared: true, adopted: true,
			journal: []store.Op{{Step: "lease", State: store.OpIntent}}},
		{name: "died after booting", shared: true, adopted: true, journal: []store.Op{
			{Step: "lease", State: store.OpDone}, {Step: "volume", State: store.OpDone, Detail: "dev-base"},
			{Step: "link", State: store.OpDone}, {Step: "boot", State: store.OpIntent}}},
		{name: "adopted once already", shared: true, journal: []store.Op{
			{Step: "lease", State: store.OpDone}, {Step: "adopt", State: store.OpDone}, {Step: "boot", State: store.OpIntent}}},
		{name: "workspace sandbox before its volume step", shared: true, workspace: true,
			journal: []store.Op{{Step: "lease", State: store.OpIntent}}},
		{name: "a prebuild's build", shared: true, workspace: true, build: true, journal: []store.Op{
			{Step: "lease", State: store.OpDone}, {Step: "volume", State: store.OpIntent, Detail: "dev-base"}}},
		{name: "a pooled sandbox's fill", shared: true, pooled: true,
			journal: []store.Op{{Step: "lease", State: store.OpIntent}}},
		{name: "one manager", journal: []store.Op{{Step: "lease", State: store.OpIntent}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.run(t)
			ctx := context.Background()
			if tc.shared {
				e.svc.SetShared(10 * time.Second)
			}
			const id = "deadcreate01"
			sb := store.Sandbox{ID: id, OwnerID: owner, Image: "dev-base", Status: store.StatusCreating, Vcpus: 1, MemoryMB: 512,
				CreatedAt: time.Now().Add(-time.Minute), UpdatedAt: time.Now().Add(-time.Minute)}
			if tc.pooled {
				sb.OwnerID = store.PoolOwner
			}
			if tc.workspace {
				if _, err := e.st.EnsureUser(ctx, store.User{ID: owner, Login: owner}); err != nil {
					t.Fatal(err)
				}
				w, err := e.st.CreateWorkspace(ctx, store.Workspace{OwnerID: owner, Name: "w", Config: json.RawMessage(`{}`)}, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				sb.WorkspaceID = w.ID
				if tc.build {
					if err := e.st.BeginPrebuild(ctx, w.ID); err != nil {
						t.Fatal(err)
					}
					if _, err := e.st.UpdatePrebuild(ctx, w.ID, func(p *store.Prebuild) { p.BuildID = id }); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := e.st.InsertSandbox(ctx, sb, 0); err != nil {
				t.Fatal(err)
			}
			e.leak(t, id) // what the dead replica's steps made
			for _, o := range tc.journal {
				o.SandboxID, o.Op = id, "create"
				oid, err := e.st.AppendOp(ctx, o)
				if err != nil {
					t.Fatal(err)
				}
				if o.State != store.OpIntent {
					if err := e.st.SetOpState(ctx, oid, o.State, o.Detail); err != nil {
						t.Fatal(err)
					}
				}
			}
			rep, err := e.svc.Reconcile(ctx, !tc.shared)
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.svc.Wait(ctxT(t), id)
			if err != nil {
				t.Fatal(err)
			}
			if tc.adopted {
				if rep.Adopted != 1 || !hasFix(rep, "adopted", id) || got.Status != store.StatusRunning {
					t.Fatalf("report %+v, sandbox %s %q: want adopted and running", counts(rep), got.Status, got.Error)
				}
				ops, _ := e.st.ListOps(ctx, id)
				for _, o := range ops {
					if o.State == store.OpIntent {
						t.Errorf("the dead replica's step %s left open", o.Step)
					}
				}
				if ok, _ := e.rt.Alive(ctx, id); !ok {
					t.Error("the adopted sandbox's runtime is not running")
				}
				return
			}
			if rep.Adopted != 0 || rep.Interrupted != 1 || got.Status != store.StatusError {
				t.Fatalf("report %+v, sandbox %s: want reverted to error", counts(rep), got.Status)
			}
			if ok, _ := e.rt.Alive(ctx, id); ok {
				t.Error("a reverted create's runtime still runs")
			}
			if _, err := e.st.GetLease(ctx, id); err == nil {
				t.Error("a reverted create holds an address")
			}
		})
	}
}

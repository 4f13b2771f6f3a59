package server

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/store"
	"atelier/internal/testenv"
)

// The leader dies (SIGKILL, a real process) at a journaled step of a
// create or a destroy it runs; the surviving replica takes the lease,
// then finishes the create (undoing the dead one's partial work and
// running it again) or the destroy, and an SSE client connected to the
// survivor sees the outcome. A create whose adopter died too is reverted
// per its journal (adopted once already), not adopted again.
func TestLeaderDiesMidOperation(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection skipped in -short mode")
	}
	const ttl = time.Second
	cases := []struct {
		point string
		// adopter, when set, is a second replica that takes over first
		// and dies at this point too.
		adopter string
		want    string // running, error or deleted
	}{
		{point: "create:lease:after", want: "running"},
		{point: "create:volume:after", want: "running"},
		{point: "create:boot:after", want: "running"},
		{point: "create:agent:after", want: "running"},
		{point: "create:hooks:after", want: "running"},
		{point: "create:boot:after", adopter: "create:adopt:after", want: "error"},
		{point: "destroy:runtime:after", want: "deleted"},
		{point: "destroy:volume:before", want: "deleted"},
		{point: "destroy:hooks:after", want: "deleted"},
	}
	for _, tc := range cases {
		name := tc.point
		if tc.adopter != "" {
			name += "+" + tc.adopter
		}
		t.Run(name, func(t *testing.T) {
			url := testenv.PostgresDB(t)
			h := newSharedHost(t, url, ttl)
			look, err := store.Open(context.Background(), t.TempDir(), store.WithDatabaseURL(url))
			if err != nil {
				t.Fatal(err)
			}
			defer look.Close()
			v := h.spawn(t, tc.point)
			waitFor(t, 5*time.Second, "the victim leads", func() bool { return leaderHolder(t, look) != "" })
			victim := leaderHolder(t, look)
			// The adopter, alone beside the victim, is the one to take over;
			// the survivor starts once the adopter is dead too.
			var w *replicaProc
			if tc.adopter != "" {
				w = h.spawn(t, tc.adopter)
			}
			var (
				s      *Server
				cs     *http.Client
				events <-chan sseEvent
			)
			survivor := func() {
				s, cs, _ = h.inProcess(t)
				events = sse(t, cs)
				if s.Leading() {
					t.Fatal("the survivor leads while the dead leader's lease runs")
				}
			}
			if w == nil {
				survivor()
			}

			var id string
			if strings.HasPrefix(tc.point, "create:") {
				id = sandboxID(t, mustCall(t, v.c, "POST", "/api/sandboxes?wait=false", `{}`, http.StatusAccepted))
			} else {
				id = sandboxID(t, mustCall(t, v.c, "POST", "/api/sandboxes", `{}`, http.StatusCreated))
				go callC(v.c, "DELETE", "/api/sandboxes/"+id, "")
			}
			v.killedAt(t, tc.point)
			died := time.Now()
			if w != nil {
				w.killedAt(t, tc.adopter)
				died = time.Now()
				survivor()
			}
			match := func(e sseEvent) bool { return e.id == id && e.st == tc.want }
			if tc.want == "deleted" {
				match = func(e sseEvent) bool { return e.id == id && e.typ == "sandbox.deleted" }
			}
			expectEvent(t, events, 10*ttl, match, "the survivor's SSE client sees "+tc.want)
			t.Logf("leader %s died at %s: %s on the survivor after %s (lease %s)", victim, tc.point, tc.want,
				time.Since(died).Round(time.Millisecond), ttl)
			if !s.Leading() {
				t.Error("the survivor does not lead")
			}

			rt, err := h.runtime(s.Log)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			switch tc.want {
			case "running":
				// The agent the survivor booted answers through it.
				mustCall(t, cs, "GET", "/api/sandboxes/"+id+"/health", "", http.StatusOK)
				ops, _ := look.ListOps(ctx, id)
				if !hasStep(ops, "adopt", store.OpDone) {
					t.Errorf("no adopt step in the journal: %+v", ops)
				}
				mustCall(t, cs, "DELETE", "/api/sandboxes/"+id, "", http.StatusNoContent)
			case "error":
				sb, err := look.GetSandbox(ctx, id)
				if err != nil || !strings.Contains(sb.Error, "interrupted") {
					t.Fatalf("reverted create: %+v %v", sb, err)
				}
				if _, err := look.GetLease(ctx, id); err == nil {
					t.Error("a reverted create holds an address")
				}
				mustCall(t, cs, "DELETE", "/api/sandboxes/"+id, "", http.StatusNoContent)
			}
			// Nothing of the sandbox remains: no agent, no volume, no row,
			// no open journal step.
			waitFor(t, 5*time.Second, "no agent left", func() bool { ids, _ := rt.List(ctx); return len(ids) == 0 })
			if vols, _ := filepath.Glob(filepath.Join(h.dir, "overlays", "*")); len(vols) != 0 {
				t.Errorf("volumes left: %v", vols)
			}
			if _, err := look.GetSandbox(ctx, id); err == nil {
				t.Error("the row remains")
			}
			waitFor(t, 5*ttl, "no open journal step", func() bool { ops, _ := look.OpenOps(ctx); return len(ops) == 0 })
		})
	}
}

func hasStep(ops []store.Op, step, state string) bool {
	for _, o := range ops {
		if o.Step == step && o.State == state {
			return true
		}
	}
	return false
}

package server

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/runtime/container/containertest"
)

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*q)]
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkContainerLifecycle measures, over 100 real runc sandboxes created
// one after another through the manager API: create -> running (agent
// ready) p50/p99 with its phase breakdown, destroy, and the agent exec round
// trip through the manager and directly; next to a bare `runc run` in the
// same run (x-floor = create p50 / floor p50).
func BenchmarkContainerLifecycle(b *testing.B) {
	f := newFixture(b)
	srv := f.start(b)
	floor, err := containertest.NewFloor("runc", filepath.Join(f.cfg.Sandbox.StateDir, "runc"), f.dir, "/"+f.prefix+"cg")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { floor.Delete() })

	const n = 100
	var create, destroy, floors, viaAPI, direct []time.Duration
	phases := map[string][]time.Duration{}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < n; i++ {
			t0 := time.Now()
			id, code, body := f.create(b)
			if code != 201 {
				b.Fatalf("create: %d %s", code, body)
			}
			create = append(create, time.Since(t0))
			var v struct{ Timings map[string]float64 }
			json.Unmarshal(body, &v)
			for k, ms := range v.Timings {
				phases[k] = append(phases[k], time.Duration(ms*float64(time.Millisecond)))
			}
			if i%10 == 0 {
				for j := 0; j < 20; j++ {
					t1 := time.Now()
					if code, _ := f.exec(b, id, "true"); code != 0 {
						b.Fatal("exec true failed")
					}
					viaAPI = append(viaAPI, time.Since(t1))
				}
				c, err := srv.Sandboxes.Agent(context.Background(), id)
				if err != nil {
					b.Fatal(err)
				}
				for j := 0; j < 20; j++ {
					t1 := time.Now()
					if r, err := c.Exec(context.Background(), agent.ExecRequest{Argv: []string{"true"}}); err != nil || r.ExitCode != 0 {
						b.Fatalf("direct exec: %v", err)
					}
					direct = append(direct, time.Since(t1))
				}
			}
			t2 := time.Now()
			if code, body := f.call(b, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				b.Fatalf("destroy: %d %s", code, body)
			}
			destroy = append(destroy, time.Since(t2))
			fd, err := floor.Run()
			if err != nil {
				b.Fatal(err)
			}
			floors = append(floors, fd)
		}
	}
	b.StopTimer()
	b.ReportMetric(msOf(pct(create, 0.5)), "create-p50-ms")
	b.ReportMetric(msOf(pct(create, 0.99)), "create-p99-ms")
	b.ReportMetric(msOf(pct(destroy, 0.5)), "destroy-p50-ms")
	b.ReportMetric(msOf(pct(floors, 0.5)), "floor-p50-ms")
	b.ReportMetric(float64(pct(create, 0.5))/float64(pct(floors, 0.5)), "x-floor")
	b.ReportMetric(msOf(pct(viaAPI, 0.5)), "exec-api-p50-ms")
	b.ReportMetric(msOf(pct(direct, 0.5)), "exec-agent-p50-ms")
	for _, p := range []string{"queue", "lease", "volume", "link", "boot", "agent", "services", "hooks"} {
		b.ReportMetric(msOf(pct(phases[p], 0.5)), p+"-p50-ms")
	}
	f.assertNoLeaks(b)
}

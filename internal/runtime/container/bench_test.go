package container

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/runtime/container/containertest"
)

// BenchmarkBootToAgentReady measures Boot -> agent healthy over 20
// sandboxes per iteration (volume copies and namespaces made beforehand,
// outside the timing), next to the floor: a bare `runc run --detach` of
// busybox from a plain directory, with no volume, no network namespace
// and no agent. x-floor = p50 ours / p50 floor.
func BenchmarkBootToAgentReady(b *testing.B) {
	const n = 20
	e := newEnv(b, false)
	ctx := context.Background()
	var ours, floor, destroy []time.Duration
	floorC, err := containertest.NewFloor(e.d.runc, e.d.opts.StateDir, e.dir, e.cgroup)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { floorC.Delete() })
	for range b.N {
		b.StopTimer()
		sbxs := make([]*sbx, n)
		for i := range sbxs {
			sbxs[i] = e.newSandbox()
		}
		b.StartTimer()
		for _, s := range sbxs {
			start := time.Now()
			if err := e.d.Boot(ctx, s.inst); err != nil {
				b.Fatalf("boot: %v\n%s", err, e.log(s.id))
			}
			c := agent.New(e.d.AgentDialer(s.id))
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := c.WaitReady(wctx, time.Millisecond)
			cancel()
			ours = append(ours, time.Since(start))
			c.Close()
			if err != nil {
				b.Fatalf("agent: %v\n%s", err, e.log(s.id))
			}
			e.recordPidNS(s.id)
			start = time.Now()
			if err := e.d.Destroy(ctx, s.id); err != nil {
				b.Fatal(err)
			}
			destroy = append(destroy, time.Since(start))

			fd, err := floorC.Run()
			if err != nil {
				b.Fatal(err)
			}
			floor = append(floor, fd)
		}
	}
	b.StopTimer()
	p50, p99 := percentile(ours, 50), percentile(ours, 99)
	f50 := percentile(floor, 50)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(f50), "floor-p50-ms")
	b.ReportMetric(ms(percentile(destroy, 50)), "destroy-p50-ms")
	b.ReportMetric(float64(p50)/float64(f50), "x-floor")
}

// BenchmarkConcurrentBoots20 boots 20 sandboxes at once (the default
// maximum) and reports the time until the last agent is ready, and the
// time to destroy them all at once.
func BenchmarkConcurrentBoots20(b *testing.B) {
	const n = 20
	e := newEnv(b, false)
	ctx := context.Background()
	var total, destroy []time.Duration
	for range b.N {
		b.StopTimer()
		sbxs := make([]*sbx, n)
		for i := range sbxs {
			sbxs[i] = e.newSandbox()
		}
		b.StartTimer()
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := time.Now()
		for i, s := range sbxs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := e.d.Boot(ctx, s.inst); err != nil {
					errs[i] = err
					return
				}
				c := agent.New(e.d.AgentDialer(s.id))
				defer c.Close()
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				errs[i] = c.WaitReady(wctx, 5*time.Millisecond)
			}()
		}
		wg.Wait()
		total = append(total, time.Since(start))
		for i, err := range errs {
			if err != nil {
				b.Fatalf("sandbox %s: %v\n%s", sbxs[i].id, err, e.log(sbxs[i].id))
			}
			e.recordPidNS(sbxs[i].id)
		}
		start = time.Now()
		for i, s := range sbxs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = e.d.Destroy(ctx, s.id)
			}()
		}
		wg.Wait()
		destroy = append(destroy, time.Since(start))
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(ms(percentile(total, 50)), "all-ready-ms")
	b.ReportMetric(ms(percentile(destroy, 50)), "all-destroyed-ms")
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

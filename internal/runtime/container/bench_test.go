package container

import (
	"context"
	"runtime"
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

// BenchmarkBootIsolation measures Boot -> agent ready with the guest's
// confinement off and on, side by side in one run: "plain" (neither),
// "seccomp" (the filter only), "userns" (the user namespace and idmapped
// root only) and "both" (the default). Each round boots and destroys one
// sandbox of each variant in turn, so the machine's drift hits all four
// alike. x-plain = p50 of the variant / p50 of plain.
//
// userns-make-us times the making of a sandbox's user namespace (an exec
// of unshare) alone, here and with 512 MiB of touched heap, a manager far
// bigger than ours: it must not grow with the manager, as a fork would.
func BenchmarkBootIsolation(b *testing.B) {
	const n = 20
	e := newEnv(b, false)
	if !e.d.UserNS() {
		b.Skip("user namespaces unavailable on this host")
	}
	variants := []struct {
		name string
		edit func(*Options)
	}{
		{"plain", func(o *Options) { o.UserNS, o.NoSeccomp = UserNSOff, true }},
		{"seccomp", func(o *Options) { o.UserNS = UserNSOff }},
		{"userns", func(o *Options) { o.UserNS, o.NoSeccomp = UserNSOn, true }},
		{"both", func(o *Options) { o.UserNS = UserNSOn }},
	}
	drivers := make([]*Driver, len(variants))
	for i, v := range variants {
		o := e.d.opts
		v.edit(&o)
		d, err := New(o)
		if err != nil {
			b.Fatal(err)
		}
		drivers[i] = d
	}
	ctx := context.Background()
	times := make([][]time.Duration, len(variants))
	for range b.N {
		b.StopTimer()
		sbxs := make([][]*sbx, len(variants))
		for i := range sbxs {
			for range n {
				sbxs[i] = append(sbxs[i], e.newSandbox())
			}
		}
		b.StartTimer()
		for k := range n {
			for i, d := range drivers {
				s := sbxs[i][k]
				start := time.Now()
				if err := d.Boot(ctx, s.inst); err != nil {
					b.Fatalf("%s: boot: %v\n%s", variants[i].name, err, e.log(s.id))
				}
				c := agent.New(d.AgentDialer(s.id))
				wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := c.WaitReady(wctx, time.Millisecond)
				cancel()
				times[i] = append(times[i], time.Since(start))
				c.Close()
				if err != nil {
					b.Fatalf("%s: agent: %v\n%s", variants[i].name, err, e.log(s.id))
				}
				e.recordPidNS(s.id)
				if err := d.Destroy(ctx, s.id); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.StopTimer()
	plain := percentile(times[0], 50)
	for i, v := range variants {
		p50 := percentile(times[i], 50)
		b.ReportMetric(ms(p50), v.name+"-p50-ms")
		b.ReportMetric(ms(percentile(times[i], 99)), v.name+"-p99-ms")
		if i > 0 {
			b.ReportMetric(float64(p50)/float64(plain), v.name+"-x-plain")
		}
	}
	r, err := hostIDRange("172.16.0.2", 24)
	if err != nil {
		b.Fatal(err)
	}
	makeTime := func() time.Duration {
		var ds []time.Duration
		for range 50 {
			start := time.Now()
			ns, err := newUserNS(e.d.usernsTools, r)
			if err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(start))
			ns.Close()
		}
		return percentile(ds, 50)
	}
	b.ReportMetric(float64(makeTime().Microseconds()), "userns-make-us")
	ballast := make([]byte, 512<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	b.ReportMetric(float64(makeTime().Microseconds()), "userns-make-512MiB-us")
	runtime.KeepAlive(ballast)
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

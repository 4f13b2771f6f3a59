package container

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"atelier/internal/agent"
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
	floorBundle := makeFloorBundle(b, e)
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

			floor = append(floor, floorRun(b, e, floorBundle))
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

// makeFloorBundle is a busybox bundle on a plain directory: runc's own cost
// of starting a container, the physical floor of ours.
func makeFloorBundle(b *testing.B, e *env) string {
	bundle := filepath.Join(e.dir, "floor")
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	run(b, "cp", "/bin/busybox", filepath.Join(rootfs, "bin", "busybox"))
	spec := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "floor",
		Process: &specs.Process{
			Args: []string{"/bin/busybox", "sleep", "600"},
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace},
			},
			CgroupsPath: e.cgroup + "/floor",
		},
	}
	cfg, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), cfg, 0o600); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { runQuiet(e.d.runc, "--root", e.d.opts.StateDir, "delete", "--force", floorName(e)) })
	return bundle
}

func floorName(e *env) string { return "floor-" + filepath.Base(e.dir) }

// floorRun times one detached start of the floor bundle and removes it.
func floorRun(b *testing.B, e *env, bundle string) time.Duration {
	name := floorName(e)
	// A file, not a pipe: the detached container inherits runc's stdio,
	// and a pipe would stay open until it exits.
	logPath := filepath.Join(e.dir, "floor.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	start := time.Now()
	cmd := exec.Command(e.d.runc, "--root", e.d.opts.StateDir, "run", "--detach", "--bundle", bundle, name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		b.Fatalf("floor runc run: %v\n%s", err, out)
	}
	d := time.Since(start)
	run(b, e.d.runc, "--root", e.d.opts.StateDir, "delete", "--force", name)
	return d
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

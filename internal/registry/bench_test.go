package registry

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"atelier/internal/registry/registrytest"
)

// benchPackages are small packages with few dependencies (about a dozen
// tarballs in all).
var benchPackages = []string{"is-number", "is-odd", "left-pad", "ms", "escape-html", "depd", "inherits", "balanced-match", "brace-expansion"}

// BenchmarkInstallThroughCache installs the same package set twice from a
// fresh npm cache each time: cold (the registry fetches metadata and
// tarballs from its uplink) and warm (everything from the registry's
// storage). The uplink is the host's npm registry through a proxy; cold
// starts from a purged storage.
func BenchmarkInstallThroughCache(b *testing.B) {
	app := registrytest.VerdaccioDir(b)
	nsName, nsPath := registrytest.Netns(b)
	up := registrytest.StartUplink(b, nsPath)
	user := registrytest.UserName(b)
	dir := registrytest.Dir(b)
	s, err := NewSupervisor(Options{
		AppDir: app, Version: registrytest.Version, StateDir: dir, User: user,
		Listen: netip.MustParseAddrPort("127.0.0.1:4873"), Uplink: up.URL, NetnsPath: nsPath,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Stop(ctx)
	npmrc := filepath.Join(dir, "npmrc")
	if err := os.WriteFile(npmrc, []byte("registry="+s.URL()+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	install := func() time.Duration {
		prefix, err := os.MkdirTemp("", "atlbench")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(prefix)
		t0 := time.Now()
		if err := registrytest.NpmInstall(ctx, nsName, npmrc, prefix, benchPackages...); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}

	var cold, warm time.Duration
	var warmUplink int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := purge(s.StorageDir()); err != nil {
			b.Fatal(err)
		}
		cold += install()
		before := up.Requests()
		warm += install()
		warmUplink += up.Requests() - before
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(cold.Milliseconds())/n, "cold-ms")
	b.ReportMetric(float64(warm.Milliseconds())/n, "warm-ms")
	b.ReportMetric(float64(cold)/float64(warm), "x-warm-speedup")
	b.ReportMetric(float64(warmUplink)/n, "warm-uplink-requests")
}

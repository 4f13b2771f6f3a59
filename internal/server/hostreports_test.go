package server

import (
	"context"
	"path/filepath"
	"testing"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

func TestFirewallState(t *testing.T) {
	for _, c := range []struct {
		tables, missing int
		want            string
	}{{2, 0, "ok"}, {2, 1, "degraded"}, {1, 0, "degraded"}, {0, 8, "missing"}} {
		if got := firewallState(c.tables, c.missing); got != c.want {
			t.Errorf("%d tables, %d rules missing: %q, want %q", c.tables, c.missing, got, c.want)
		}
	}
}

// TestMockReports: mock mode's storage card reports the filesystem the state
// dir will be on before the dir exists, and its network card the mock links.
func TestMockReports(t *testing.T) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Sandbox.StateDir = filepath.Join(t.TempDir(), "not", "yet")
	nw, vols := netmock.New(), stmock.New(t.TempDir())
	r := mockReports{cfg: cfg, drv: sandbox.Drivers{Network: nw, Volumes: vols}}
	if _, err := vols.Clone(ctx, "dev-base", "abcdefghijkl"); err != nil {
		t.Fatal(err)
	}
	pools, err := r.StoragePools(ctx)
	if err != nil || len(pools) != 1 || pools[0].Driver != "mock" || pools[0].TotalBytes <= 0 || pools[0].Volumes != 1 {
		t.Fatalf("pools %+v, %v", pools, err)
	}
	if _, err := nw.Attach(ctx, "abcdefghijkl", store.Lease{IP: "172.16.0.2", MAC: "06:00:00:00:00:02", SandboxID: "abcdefghijkl"}); err != nil {
		t.Fatal(err)
	}
	hn, err := r.Network(ctx)
	if err != nil || hn.Links != 1 || hn.LinkKind != "mock" || hn.Firewall.State != "mock" {
		t.Fatalf("network %+v, %v", hn, err)
	}
}

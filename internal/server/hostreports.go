package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"atelier/internal/api"
	"atelier/internal/config"
	"atelier/internal/network"
	"atelier/internal/sandbox"
	"atelier/internal/storage"
	"atelier/internal/storage/lvm"
	"atelier/internal/storage/pool"
)

// hostReports are the System page's storage and network facts from the
// production drivers.
type hostReports struct {
	vols *pool.Set
	net  *network.Manager
	kind network.LinkKind
}

func (h hostReports) StoragePools(ctx context.Context) ([]api.StoragePool, error) {
	us, err := h.vols.Usage(ctx)
	out := make([]api.StoragePool, 0, len(us))
	for _, u := range us {
		p := api.StoragePool{Usage: u}
		if u.Driver == storage.DriverLVM {
			// pool.OpenSet opens the lvm driver with the default limits.
			p.OvercommitMax = lvm.DefaultLimits().OvercommitMax
		}
		out = append(out, p)
	}
	return out, err
}

func (h hostReports) Network(ctx context.Context) (api.HostNetwork, error) {
	st, err := h.net.Status(ctx)
	if err != nil {
		return api.HostNetwork{}, err
	}
	hn := api.HostNetwork{
		BridgePresent: st.BridgePresent, BridgeUp: st.BridgeUp, BridgeAddrs: st.BridgeAddrs, Egress: st.Egress,
		LinkKind: string(h.kind),
		Firewall: api.Firewall{Tables: st.Tables, Rules: st.Rules, Missing: st.FirewallMissing, Drops: map[string]uint64{
			"spoofed": st.Drops.Spoofed, "guestToGuest": st.Drops.GuestToGuest, "guestToHost": st.Drops.GuestToHost,
			"forward": st.Drops.Forward, "private": st.Drops.Private, "routed": st.Drops.Routed,
		}},
	}
	for _, l := range st.Links {
		hn.Links++
		if l.Up {
			hn.LinksUp++
		}
	}
	hn.Firewall.State = firewallState(len(st.Tables), len(st.FirewallMissing))
	return hn, nil
}

func firewallState(tables, missing int) string {
	switch {
	case tables == 0:
		return "missing"
	case tables < 2 || missing > 0:
		return "degraded"
	}
	return "ok"
}

// mockReports answer for drivers that are not the host's (mock mode, tests):
// the pool is the filesystem holding the state directory, and the links are
// whatever the mock network holds. There is no bridge and no firewall.
type mockReports struct {
	cfg *config.Config
	drv sandbox.Drivers
}

func (m mockReports) StoragePools(ctx context.Context) ([]api.StoragePool, error) {
	var st unix.Statfs_t
	// The state dir may not exist yet in mock mode: its nearest ancestor is
	// the filesystem it will be on.
	dir := m.cfg.Sandbox.StateDir
	for {
		err := unix.Statfs(dir, &st)
		if err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if !errors.Is(err, os.ErrNotExist) || parent == dir {
			return nil, err
		}
		dir = parent
	}
	u := storage.Usage{Driver: "mock", TotalBytes: int64(st.Blocks) * st.Bsize, UsedBytes: int64(st.Blocks-st.Bfree) * st.Bsize}
	if u.TotalBytes > 0 {
		u.DataPercent = float64(u.UsedBytes) / float64(u.TotalBytes) * 100
	}
	if st.Files > 0 {
		u.MetadataPercent = float64(st.Files-st.Ffree) / float64(st.Files) * 100
	}
	if v, ok := m.drv.Volumes.(interface{ IDs() []string }); ok {
		u.Volumes = len(v.IDs())
	}
	return []api.StoragePool{{Usage: u}}, nil
}

func (m mockReports) Network(ctx context.Context) (api.HostNetwork, error) {
	hn := api.HostNetwork{LinkKind: "mock", BridgeAddrs: []string{},
		Firewall: api.Firewall{State: "mock", Tables: []string{}, Missing: []string{}, Drops: map[string]uint64{}}}
	if n, ok := m.drv.Network.(interface{ LinkIDs() []string }); ok {
		hn.Links = len(n.LinkIDs())
		hn.LinksUp = hn.Links
	}
	return hn, nil
}

package api

import (
	"context"
	"net/http"
	"net/netip"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/sandbox"
	"atelier/internal/storage"
	"atelier/internal/store"
)

// HostReports are the host-wide facts of the System page that live in the
// drivers, not the store: the volume drivers' pools and the host network.
// The server builds them from the drivers it runs (production) or from the
// mock ones, so this package needs neither.
type HostReports interface {
	// StoragePools reports the pool of every volume driver present, the one
	// for new volumes first.
	StoragePools(ctx context.Context) ([]StoragePool, error)
	// Network reports the bridge, the firewall and the sandbox links.
	Network(ctx context.Context) (HostNetwork, error)
}

// StoragePool is one volume driver's pool.
type StoragePool struct {
	storage.Usage
	// OvercommitMax is the driver's refusal threshold; 0 when it has none.
	OvercommitMax   float64 `json:"overcommitMax" doc:"The overcommit ratio past which the driver refuses new volumes (lvm: 10); 0 when it has no such limit."`
	OvercommitRatio float64 `json:"overcommitRatio" doc:"virtualBytes / totalBytes: above 1, guests could write more than the pool holds."`
}

type storageBody struct {
	Driver string        `json:"driver" doc:"The driver new sandbox volumes go to (lvm, file, or mock)."`
	Pools  []StoragePool `json:"pools"`
	// Sums over the pools and the sandboxes, for the card's headline.
	PhysicalBytes   int64   `json:"physicalBytes" doc:"The pools' physical size, summed."`
	UsedBytes       int64   `json:"usedBytes" doc:"What the pools have written, summed."`
	AllocatedBytes  int64   `json:"allocatedBytes" doc:"The disks of every sandbox (the store's record of their virtual sizes): what guests could write if each filled its disk."`
	Sandboxes       int     `json:"sandboxes" doc:"Sandboxes holding a volume (every status)."`
	OvercommitRatio float64 `json:"overcommitRatio" doc:"allocatedBytes / physicalBytes; above 1 the pools are overcommitted."`
	Error           string  `json:"error,omitempty" doc:"A driver that could not report (the others still are)."`
}

// HostNetwork is the live state of the host network.
type HostNetwork struct {
	BridgePresent bool     `json:"bridgePresent"`
	BridgeUp      bool     `json:"bridgeUp"`
	BridgeAddrs   []string `json:"bridgeAddrs"`
	Egress        string   `json:"egress,omitempty" doc:"The interface guests' traffic leaves by."`
	LinkKind      string   `json:"linkKind" enum:"tap,veth,mock" doc:"What a sandbox's link is: a TAP (firecracker), a veth (container), or nothing real (mock mode)."`
	Links         int      `json:"links" doc:"Sandbox links (TAPs or veths) on the host."`
	LinksUp       int      `json:"linksUp"`
	Firewall      Firewall `json:"firewall"`
}

// Firewall is a cheap check of the firewall: its tables and the drop rules
// every setup makes, not a dump.
type Firewall struct {
	State   string            `json:"state" enum:"ok,degraded,missing,mock,checking,enforced,not-enforced,unknown" doc:"ok: both tables and every expected drop rule present; degraded: some missing; missing: no table (run atelier network setup); mock: mock mode has no firewall. On a cluster (sandbox.runtime kubernetes) the firewall is the NetworkPolicies, and the start-up check found them: checking (under way), enforced, not-enforced (creates and starts are refused unless sandbox.kubernetes.allowUnenforcedPolicies), unknown (the check failed: error says why)."`
	Tables  []string          `json:"tables"`
	Rules   int               `json:"rules"`
	Missing []string          `json:"missing" doc:"Expected drop rules (by their comment) not found."`
	Drops   map[string]uint64 `json:"drops" doc:"Packets the drop rules have dropped, by reason."`
	Error   string            `json:"error,omitempty"`
}

type networkBody struct {
	Bridge  string `json:"bridge" doc:"network.bridgeName"`
	Subnet  string `json:"subnet" doc:"The guests' IPv4 subnet."`
	Gateway string `json:"gateway" doc:"The bridge's address: the guests' gateway."`
	HostNetwork
	Leases int    `json:"leases" doc:"Addresses leased to sandboxes (the store)."`
	Error  string `json:"error,omitempty"`
}

func (s *Server) registerSystemHost() {
	tags := []string{"system"}
	errs := []int{http.StatusUnauthorized, http.StatusForbidden}
	huma.Register(s.api, huma.Operation{
		OperationID: "system-storage", Method: http.MethodGet, Path: "/api/system/storage", Tags: tags,
		Summary: "The volume pools' fill and overcommit (admin)", Security: securityAuthed, Errors: errs,
		Description: "Each volume driver's pool (size, used, the volumes' virtual sizes, data and metadata fill), and the disks allocated to sandboxes against the physical size. Admin only.",
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body storageBody }, error) {
		if err := requireAdmin(ctx, "the storage report"); err != nil {
			return nil, err
		}
		b := storageBody{Pools: []StoragePool{}}
		if s.d.Host != nil {
			pools, err := s.d.Host.StoragePools(ctx)
			if err != nil {
				b.Error = err.Error()
			}
			for _, p := range pools {
				if p.TotalBytes > 0 {
					p.OvercommitRatio = float64(p.VirtualBytes) / float64(p.TotalBytes)
				}
				b.Pools = append(b.Pools, p)
				b.PhysicalBytes += p.TotalBytes
				b.UsedBytes += p.UsedBytes
			}
			if len(pools) > 0 {
				b.Driver = pools[0].Driver
			}
		}
		rows, err := s.d.Store.ListSandboxes(ctx, store.SandboxFilter{NoTimings: true})
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		for _, sb := range rows {
			b.Sandboxes++
			b.AllocatedBytes += sb.DiskBytes
		}
		if b.PhysicalBytes > 0 {
			b.OvercommitRatio = float64(b.AllocatedBytes) / float64(b.PhysicalBytes)
		}
		return &struct{ Body storageBody }{b}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "system-network", Method: http.MethodGet, Path: "/api/system/network", Tags: tags,
		Summary: "The bridge, subnet, firewall check and sandbox links (admin)", Security: securityAuthed, Errors: errs,
		Description: "The firewall is checked, not dumped: its two tables and the drop rules every setup makes must be present. Admin only.",
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body networkBody }, error) {
		if err := requireAdmin(ctx, "the network report"); err != nil {
			return nil, err
		}
		cfg := s.d.Config
		b := networkBody{Bridge: cfg.Network.BridgeName}
		if gw, _, _, err := cfg.GuestRange(); err == nil {
			b.Gateway = gw.String()
			b.Subnet = netip.PrefixFrom(gw, cfg.Network.BridgePrefix).Masked().String()
		}
		b.BridgeAddrs, b.Firewall.Tables, b.Firewall.Missing, b.Firewall.Drops = []string{}, []string{}, []string{}, map[string]uint64{}
		if s.d.Host != nil {
			hn, err := s.d.Host.Network(ctx)
			if err != nil {
				b.Error = err.Error()
			} else {
				b.HostNetwork = hn
			}
		}
		leases, err := s.d.Store.ListLeases(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		b.Leases = len(leases)
		return &struct{ Body networkBody }{b}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "system-reconciler", Method: http.MethodGet, Path: "/api/system/reconciler", Tags: tags,
		Summary: "The reconciler's newest fixes (admin)", Security: securityAuthed, Errors: errs,
		Description: "The newest 50 fixes of the reconciler's passes (periodic, at start-up and cleanups), newest first; " +
			"admins' GET /api/events streams system.reconciled after each pass that fixed something. Kept in memory: a restart starts the list afresh. Admin only.",
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body sandbox.ReconcilerState }, error) {
		if err := requireAdmin(ctx, "the reconciler's fixes"); err != nil {
			return nil, err
		}
		return &struct{ Body sandbox.ReconcilerState }{s.d.Sandboxes.RecentFixes()}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "system-cleanup-preview", Method: http.MethodGet, Path: "/api/system/cleanup", Tags: tags,
		Summary: "What a cleanup would fix now, changing nothing (admin)", Security: securityAuthed, Errors: errs,
		Description: "A dry run of POST /api/system/cleanup: the fixes a reconciler pass would make now. Admin only.",
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body sandbox.Report }, error) {
		if err := requireAdmin(ctx, "the cleanup preview"); err != nil {
			return nil, err
		}
		rep, err := s.d.Sandboxes.PreviewReconcile(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &struct{ Body sandbox.Report }{rep}, nil
	})
}

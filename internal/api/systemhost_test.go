package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/config"
)

// TestSystemHostReports: the System page's storage and network cards get
// real numbers in mock mode: the filesystem under the state dir, the mock
// links of running sandboxes, the leases and the configured subnet.
func TestSystemHostReports(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	v := h.create(t, nil)

	var st struct {
		Driver string `json:"driver"`
		Pools  []struct {
			Driver      string  `json:"driver"`
			TotalBytes  int64   `json:"totalBytes"`
			UsedBytes   int64   `json:"usedBytes"`
			DataPercent float64 `json:"dataPercent"`
			Volumes     int     `json:"volumes"`
		} `json:"pools"`
		PhysicalBytes int64 `json:"physicalBytes"`
		Sandboxes     int   `json:"sandboxes"`
	}
	r := h.do(t, "GET", "/api/system/storage", nil, nil)
	r.json(t, &st)
	if r.status != 200 || st.Driver != "mock" || len(st.Pools) != 1 || st.Pools[0].TotalBytes <= 0 || st.Pools[0].UsedBytes <= 0 ||
		st.Pools[0].DataPercent <= 0 || st.Pools[0].Volumes != 1 || st.PhysicalBytes != st.Pools[0].TotalBytes || st.Sandboxes != 1 {
		t.Fatalf("storage: %d %s", r.status, r.body)
	}

	var nw struct {
		Bridge   string `json:"bridge"`
		Subnet   string `json:"subnet"`
		Gateway  string `json:"gateway"`
		LinkKind string `json:"linkKind"`
		Links    int    `json:"links"`
		Leases   int    `json:"leases"`
		Firewall struct {
			State string `json:"state"`
		} `json:"firewall"`
	}
	r = h.do(t, "GET", "/api/system/network", nil, nil)
	r.json(t, &nw)
	gw, _, _, _ := h.srv.Config.GuestRange()
	want := netip.PrefixFrom(gw, h.srv.Config.Network.BridgePrefix).Masked().String()
	if r.status != 200 || nw.Bridge != h.srv.Config.Network.BridgeName || nw.Subnet != want || nw.Gateway != gw.String() ||
		nw.LinkKind != "mock" || nw.Links != 1 || nw.Leases != 1 || nw.Firewall.State != "mock" {
		t.Fatalf("network: %d %s (want subnet %s)", r.status, r.body, want)
	}
	// A stopped sandbox keeps its lease but not its link.
	if r := h.do(t, "POST", "/api/sandboxes/"+v.ID+"/stop", nil, nil); r.status != 200 {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	r = h.do(t, "GET", "/api/system/network", nil, nil)
	r.json(t, &nw)
	if nw.Links != 0 {
		t.Fatalf("network after stop: %s", r.body)
	}
}

// TestReconcilerFixesAdminOnly: what the reconciler fixes is a host-wide
// report: an admin previews a cleanup, runs it, sees the fix in the list and
// on the event stream; a user sees none of it, neither by the routes (with
// a full or a read token) nor on their own event stream.
func TestReconcilerFixesAdminOnly(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	admin := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	adminRead := h.tokenOf(t, "root", 9, auth.ScopeRead)
	user := h.tokenOf(t, "octocat", 1, auth.ScopeFull)
	userRead := h.tokenOf(t, "octocat", 1, auth.ScopeRead)

	// A crash left an address leased to a sandbox that does not exist.
	const orphan = "orphan000001"
	_, first, last, err := h.srv.Config.GuestRange()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.Store.AllocateLease(context.Background(), orphan, first, last, func(netip.Addr) string { return "06:00:00:00:00:99" }); err != nil {
		t.Fatal(err)
	}

	for _, route := range []string{"/api/system/reconciler", "/api/system/cleanup", "/api/system/storage", "/api/system/network"} {
		for name, hdr := range map[string]map[string]string{"user": user, "user's read token": userRead, "admin's read token": adminRead} {
			if r := h.do(t, "GET", route, nil, hdr); r.status != 403 || !strings.Contains(string(r.body), "admins only") {
				t.Errorf("GET %s by the %s: %d %s, want 403", route, name, r.status, r.body)
			}
		}
	}
	if r := h.do(t, "POST", "/api/system/cleanup", nil, user); r.status != 403 {
		t.Fatalf("cleanup by a user: %d %s", r.status, r.body)
	}

	stream := func(hdr map[string]string) *http.Response {
		req, _ := http.NewRequest("GET", h.ts.URL+"/api/events", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("events: %v %v", res, err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	adminEvents, userEvents := stream(admin), stream(user)

	type report struct {
		Leases int `json:"leases"`
		Fixes  []struct {
			SandboxID string    `json:"sandboxId"`
			Kind      string    `json:"kind"`
			Detail    string    `json:"detail"`
			At        time.Time `json:"at"`
		} `json:"fixes"`
	}
	var preview report
	r := h.do(t, "GET", "/api/system/cleanup", nil, admin)
	r.json(t, &preview)
	if r.status != 200 || preview.Leases != 1 || len(preview.Fixes) != 1 || preview.Fixes[0].SandboxID != orphan || preview.Fixes[0].Kind != "lease" {
		t.Fatalf("preview: %d %s", r.status, r.body)
	}
	if leases, _ := h.srv.Store.ListLeases(context.Background()); len(leases) != 1 {
		t.Fatalf("the preview released the lease: %v", leases)
	}

	var done report
	r = h.do(t, "POST", "/api/system/cleanup", nil, admin)
	r.json(t, &done)
	if r.status != 200 || done.Leases != 1 || len(done.Fixes) != 1 {
		t.Fatalf("cleanup: %d %s", r.status, r.body)
	}
	ev := readEvents(t, adminEvents.Body, 1, 5*time.Second)[0]
	var evRep report
	if err := json.Unmarshal([]byte(ev.data), &evRep); err != nil || ev.event != "system.reconciled" || len(evRep.Fixes) != 1 || evRep.Fixes[0].SandboxID != orphan {
		t.Fatalf("admin's stream: %+v (%v)", ev, err)
	}

	var recent struct {
		Fixes  []struct{ SandboxID, Kind, Detail string } `json:"fixes"`
		Passes int                                        `json:"passes"`
	}
	r = h.do(t, "GET", "/api/system/reconciler", nil, admin)
	r.json(t, &recent)
	if r.status != 200 || len(recent.Fixes) != 1 || recent.Fixes[0].SandboxID != orphan || !strings.Contains(recent.Fixes[0].Detail, "release") || recent.Passes < 1 {
		t.Fatalf("reconciler: %d %s", r.status, r.body)
	}

	// The user's stream carries their own sandbox next, nothing before it.
	mine := h.create2(t, user)
	got := readEvents(t, userEvents.Body, 1, 5*time.Second)[0]
	if got.event != "sandbox.created" || !strings.Contains(got.data, mine.ID) {
		t.Fatalf("user's first event: %+v, want their sandbox.created", got)
	}
	// Nor does a replay from the start show it to them.
	req, _ := http.NewRequest("GET", h.ts.URL+"/api/events?since=0", nil)
	for k, v := range user {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	for _, e := range readEvents(t, res.Body, 2, 5*time.Second) {
		if strings.HasPrefix(e.event, "system.") {
			t.Fatalf("user replayed %+v", e)
		}
	}
}

package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"atelier/internal/store"
)

// entries returns the anti-spoofing elements per port name.
func (tp *topo) entries(t testing.TB) map[string][]portEntry {
	t.Helper()
	c, err := tp.m.nft()
	must(t, err)
	_, br := ourTables()
	elems, err := c.GetSetElements(&nftables.Set{Table: br, Name: guestsSet, KeyType: guestsKeyType})
	must(t, err)
	out := map[string][]portEntry{}
	for _, el := range elems {
		k := el.Key
		if len(k) != 28 {
			t.Fatalf("element key of %d bytes", len(k))
		}
		e := portEntry{name: portOfKey(k), mac: net.HardwareAddr(k[16:22]), ip: netip.AddrFrom4([4]byte(k[24:28]))}
		out[e.name] = append(out[e.name], e)
	}
	return out
}

// hostTables lists the nftables tables of the test's host namespace.
func (tp *topo) hostTables(t testing.TB) []string {
	t.Helper()
	c, err := tp.m.nft()
	must(t, err)
	tabs, err := c.ListTables()
	must(t, err)
	var out []string
	for _, tb := range tabs {
		out = append(out, familyName(tb.Family)+" "+tb.Name)
	}
	return out
}

func (tp *topo) linksOf(t testing.TB, id string) []LinkInfo {
	t.Helper()
	links, err := tp.m.Links(context.Background())
	must(t, err)
	var out []LinkInfo
	for _, l := range links {
		if l.SandboxID == id {
			out = append(out, l)
		}
	}
	return out
}

// guestWorks proves with traffic that the sandbox's link carries its lease.
func (tp *topo) guestWorks(t *testing.T, kind LinkKind, id, link string, last byte) {
	t.Helper()
	l := guestLease(id, last)
	ip := netip.MustParseAddr(l.IP)
	if kind == LinkVeth {
		if err := pingIn(tp.guestNS(t, id), netip.Addr{}, testGW, okTimeout); err != nil {
			t.Errorf("guest %s to gateway: %v", id, err)
		}
		return
	}
	mac, _ := net.ParseMAC(l.MAC)
	g := startTAPGuest(t, tp.host, link, ip, mac)
	if !g.echo(t, testGW, bridgeMAC(testGW), 77, okTimeout) {
		t.Errorf("TAP guest %s on %s: no echo reply from the gateway", id, link)
	}
	// Release the TAP so later steps may delete it.
	g.f.Close()
}

func TestSetupIsIdempotent(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	first, err := tp.m.Status(ctx)
	must(t, err)
	must(t, tp.m.Setup(ctx))
	st, err := tp.m.Status(ctx)
	must(t, err)
	if !st.BridgePresent || !st.BridgeUp || !st.BridgeOwned {
		t.Errorf("bridge: %+v", st)
	}
	if !slices.Equal(st.BridgeAddrs, []string{"172.16.0.1/24"}) {
		t.Errorf("bridge addresses %v", st.BridgeAddrs)
	}
	if st.Egress != "wan0" || st.IPForward || !st.BridgeForwarding || !st.EgressForwarding || !st.RoutingGuard {
		t.Errorf("egress %q, host-wide ip_forward %v (want it left off), forwarding on bridge %v and egress %v, guard %v",
			st.Egress, st.IPForward, st.BridgeForwarding, st.EgressForwarding, st.RoutingGuard)
	}
	if !slices.Equal(st.Tables, []string{"inet atelier", "bridge atelier_bridge"}) {
		t.Errorf("tables %v", st.Tables)
	}
	if st.Rules == 0 || st.Rules != first.Rules {
		t.Errorf("rules: %d after the first setup, %d after the second", first.Rules, st.Rules)
	}
	if len(st.FirewallMissing) != 0 {
		t.Errorf("a fresh firewall misses %v", st.FirewallMissing)
	}
	if tabs := tp.hostTables(t); len(tabs) != 2 {
		t.Errorf("host netns tables after two setups: %v", tabs)
	}
	br, err := tp.hh.LinkByName("br0")
	must(t, err)
	if br.Attrs().HardwareAddr.String() != "02:00:ac:10:00:01" {
		t.Errorf("bridge MAC %s", br.Attrs().HardwareAddr)
	}
}

// TestStatusNamesMissingRules: the System page's firewall check names a drop
// rule someone deleted by hand, and a Setup puts it back.
func TestStatusNamesMissingRules(t *testing.T) {
	tp := newTopo(t, LinkTAP)
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	c, err := tp.m.nft()
	must(t, err)
	_, br := ourTables()
	chains, err := c.ListChainsOfTableFamily(br.Family)
	must(t, err)
	deleted := 0
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != br.Name {
			continue
		}
		rules, err := c.GetRules(br, ch)
		must(t, err)
		for _, r := range rules {
			if cmt, _ := userdata.GetString(r.UserData, userdata.TypeComment); cmt == cmtSpoof {
				must(t, c.DelRule(r))
				deleted++
			}
		}
	}
	must(t, c.Flush())
	if deleted != 1 {
		t.Fatalf("deleted %d spoof rules, want 1", deleted)
	}
	st, err := tp.m.Status(ctx)
	must(t, err)
	if !slices.Equal(st.FirewallMissing, []string{cmtSpoof}) {
		t.Errorf("missing after deleting the spoof rule: %v", st.FirewallMissing)
	}
	must(t, tp.m.Setup(ctx))
	st, err = tp.m.Status(ctx)
	must(t, err)
	if len(st.FirewallMissing) != 0 {
		t.Errorf("missing after setup again: %v", st.FirewallMissing)
	}
	must(t, tp.m.Teardown(ctx))
	st, err = tp.m.Status(ctx)
	must(t, err)
	if len(st.FirewallMissing) != len(expectedDrops) {
		t.Errorf("missing after teardown: %v, want all %d", st.FirewallMissing, len(expectedDrops))
	}
}

func TestSetupNeedsDefaultRoute(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	routes, err := tp.hh.RouteList(nil, netlink.FAMILY_V4)
	must(t, err)
	for _, r := range routes {
		if r.Gw != nil {
			must(t, tp.hh.RouteDel(&r))
		}
	}
	err = tp.m.Setup(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no IPv4 default route") {
		t.Fatalf("setup without a default route: %v", err)
	}
	if _, err := tp.hh.LinkByName("br0"); !isLinkNotFound(err) {
		t.Errorf("a refused setup created the bridge: %v", err)
	}
	if tabs := tp.hostTables(t); len(tabs) != 0 {
		t.Errorf("a refused setup created tables %v", tabs)
	}
	st, err := tp.m.Status(context.Background())
	must(t, err)
	if st.Egress != "" || !strings.Contains(st.EgressError, "default route") {
		t.Errorf("status egress %q, error %q", st.Egress, st.EgressError)
	}
}

func TestAttachWithoutSetupFails(t *testing.T) {
	for _, kind := range []LinkKind{LinkTAP, LinkVeth} {
		t.Run(string(kind), func(t *testing.T) {
			tp := newTopo(t, kind)
			_, err := tp.m.Attach(context.Background(), "nosetup00001", guestLease("nosetup00001", 10))
			if err == nil || !strings.Contains(err.Error(), "setup") {
				t.Fatalf("attach before setup: %v", err)
			}
			// Create the bridge by hand: the firewall is still missing, and
			// a port must not come up without its anti-spoofing entry.
			la := netlink.NewLinkAttrs()
			la.Name = "br0"
			must(t, tp.hh.LinkAdd(&netlink.Bridge{LinkAttrs: la}))
			_, err = tp.m.Attach(context.Background(), "nosetup00001", guestLease("nosetup00001", 10))
			if err == nil || !errors.Is(err, errNoFirewall) {
				t.Fatalf("attach without firewall: %v", err)
			}
			if l := tp.linksOf(t, "nosetup00001"); len(l) != 0 {
				t.Errorf("a failed attach left links %+v", l)
			}
			if ns, _ := tp.m.Namespaces(context.Background()); len(ns) != 0 {
				t.Errorf("a failed attach left netns %v", ns)
			}
		})
	}
}

func TestAttachDetach(t *testing.T) {
	for _, kind := range []LinkKind{LinkTAP, LinkVeth} {
		t.Run(string(kind), func(t *testing.T) {
			tp := newTopo(t, kind)
			ctx := context.Background()
			must(t, tp.m.Setup(ctx))
			id := "lifecycle001"

			name := tp.attach(t, id, 10)
			again := tp.attach(t, id, 10)
			if again != name {
				t.Errorf("second attach returned %s, first %s", again, name)
			}
			want := map[LinkKind]string{LinkTAP: "tap-lifecycl", LinkVeth: "vethlifecycl"}[kind]
			if name != want {
				t.Errorf("link name %s, want %s", name, want)
			}
			links := tp.linksOf(t, id)
			if len(links) != 1 {
				t.Fatalf("links of %s: %+v", id, links)
			}
			l := links[0]
			if l.Name != name || l.Kind != kind || l.IP != "172.16.0.10" || l.MAC != "06:00:ac:10:00:0a" ||
				!l.Up || !l.Isolated || l.Master != "br0" {
				t.Errorf("link %+v", l)
			}
			if es := tp.entries(t)[name]; len(es) != 1 || es[0].ip.String() != "172.16.0.10" || es[0].mac.String() != "06:00:ac:10:00:0a" {
				t.Errorf("anti-spoofing entries of %s: %+v", name, es)
			}
			hl, err := tp.hh.LinkByName(name)
			must(t, err)
			if hl.Attrs().Group != PortGroup {
				t.Errorf("group %#x", hl.Attrs().Group)
			}
			if kind == LinkVeth {
				if l.Netns != tp.m.NetnsPath(id) {
					t.Errorf("netns %q", l.Netns)
				}
				if _, err := os.Stat(tp.m.NetnsPath(id)); err != nil {
					t.Errorf("netns: %v", err)
				}
			}
			tp.guestWorks(t, kind, id, name, 10)

			// Another sandbox cannot take an address or MAC that is on the bridge.
			dup := guestLease("duplicate001", 10)
			if _, err := tp.m.Attach(ctx, "duplicate001", dup); !errors.Is(err, errLeaseInUse) {
				t.Errorf("attach with a lease in use: %v", err)
			}
			dup.MAC = "06:00:ac:10:00:0b"
			if _, err := tp.m.Attach(ctx, "duplicate001", dup); !errors.Is(err, errLeaseInUse) {
				t.Errorf("attach with an address in use: %v", err)
			}
			if l := tp.linksOf(t, "duplicate001"); len(l) != 0 {
				t.Errorf("refused attach left links %+v", l)
			}

			// A new lease replaces the link's entry; the old address is gone.
			name2, err := tp.m.Attach(ctx, id, guestLease(id, 12))
			must(t, err)
			if es := tp.entries(t)[name2]; len(es) != 1 || es[0].ip.String() != "172.16.0.12" {
				t.Errorf("entries after a new lease: %+v", tp.entries(t))
			}
			if links := tp.linksOf(t, id); len(links) != 1 || links[0].IP != "172.16.0.12" {
				t.Errorf("links after a new lease: %+v", links)
			}
			tp.guestWorks(t, kind, id, name2, 12)

			must(t, tp.m.Detach(ctx, id))
			must(t, tp.m.Detach(ctx, id))
			must(t, tp.m.Detach(ctx, "neverseen001"))
			if links := tp.linksOf(t, id); len(links) != 0 {
				t.Errorf("links after detach: %+v", links)
			}
			if _, err := tp.hh.LinkByName(name2); !isLinkNotFound(err) {
				t.Errorf("%s after detach: %v", name2, err)
			}
			if es := tp.entries(t); len(es) != 0 {
				t.Errorf("entries after detach: %+v", es)
			}
			if _, err := os.Stat(tp.m.NetnsPath(id)); !os.IsNotExist(err) {
				t.Errorf("netns after detach: %v", err)
			}
		})
	}
}

func TestAttachRejectsBadInput(t *testing.T) {
	m := &Manager{opts: Options{BridgeIP: testBridgeIP, Kind: LinkVeth}}
	cases := []struct {
		name  string
		id    string
		lease store.Lease
	}{
		{"id too short", "abc", guestLease("abc", 10)},
		{"id with a slash", "../etc/pass1", guestLease("", 10)},
		{"lease of another sandbox", "goodid000001", store.Lease{IP: "172.16.0.10", SandboxID: "other0000001", MAC: "06:00:ac:10:00:0a"}},
		{"address outside the subnet", "goodid000001", store.Lease{IP: "10.0.0.5", MAC: "06:00:0a:00:00:05"}},
		{"the gateway", "goodid000001", store.Lease{IP: "172.16.0.1", MAC: "06:00:ac:10:00:01"}},
		{"the broadcast address", "goodid000001", store.Lease{IP: "172.16.0.255", MAC: "06:00:ac:10:00:ff"}},
		{"IPv6", "goodid000001", store.Lease{IP: "fd00::10", MAC: "06:00:ac:10:00:0a"}},
		{"multicast MAC", "goodid000001", store.Lease{IP: "172.16.0.10", MAC: "01:00:5e:00:00:01"}},
		{"zero MAC", "goodid000001", store.Lease{IP: "172.16.0.10", MAC: "00:00:00:00:00:00"}},
		{"long MAC", "goodid000001", store.Lease{IP: "172.16.0.10", MAC: "06:00:ac:10:00:0a:00:00"}},
		{"garbage MAC", "goodid000001", store.Lease{IP: "172.16.0.10", MAC: "nope"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Input is checked before anything touches the host.
			if _, err := m.Attach(context.Background(), c.id, c.lease); err == nil {
				t.Error("accepted")
			}
		})
	}
	if err := m.Detach(context.Background(), "../x"); err == nil {
		t.Error("detach accepted an invalid id")
	}
}

func TestIDsSharingAPrefix(t *testing.T) {
	for _, kind := range []LinkKind{LinkTAP, LinkVeth} {
		t.Run(string(kind), func(t *testing.T) {
			tp := newTopo(t, kind)
			ctx := context.Background()
			must(t, tp.m.Setup(ctx))
			a, b := "sharedpf0001", "sharedpf0002"
			na := tp.attach(t, a, 10)
			nb := tp.attach(t, b, 11)
			names := linkNames(kind, b)
			if na != names[0] || nb != names[1] || na == nb {
				t.Fatalf("names %s and %s, want %s and %s", na, nb, names[0], names[1])
			}
			if again := tp.attach(t, b, 11); again != nb {
				t.Errorf("second attach of %s returned %s, first %s", b, again, nb)
			}
			for id, n := range map[string]string{a: na, b: nb} {
				if l := tp.linksOf(t, id); len(l) != 1 || l[0].Name != n {
					t.Errorf("links of %s: %+v", id, l)
				}
			}
			tp.guestWorks(t, kind, a, na, 10)
			tp.guestWorks(t, kind, b, nb, 11)

			must(t, tp.m.Detach(ctx, a))
			if l := tp.linksOf(t, b); len(l) != 1 || l[0].Name != nb {
				t.Fatalf("detaching %s touched %s: %+v", a, b, l)
			}
			if es := tp.entries(t); len(es) != 1 || len(es[nb]) != 1 {
				t.Errorf("entries after detaching %s: %+v", a, es)
			}
			tp.guestWorks(t, kind, b, nb, 11)
			must(t, tp.m.Detach(ctx, b))
			if links, _ := tp.m.Links(ctx); len(links) != 0 {
				t.Errorf("links left: %+v", links)
			}
		})
	}
}

func TestCrashLeftovers(t *testing.T) {
	t.Run("tap", func(t *testing.T) {
		tp := newTopo(t, LinkTAP)
		ctx := context.Background()
		must(t, tp.m.Setup(ctx))
		// A TAP created just before a crash has our name and no alias.
		must(t, tp.m.createTAP("tap-crashtap"))
		// A foreign link holds the primary name of another sandbox.
		la := netlink.NewLinkAttrs()
		la.Name = "tap-foreignl"
		must(t, tp.hh.LinkAdd(&netlink.Bridge{LinkAttrs: la}))

		if n := tp.attach(t, "crashtap0001", 10); n != "tap-crashtap" {
			t.Errorf("orphan TAP not adopted: got %s", n)
		}
		n := tp.attach(t, "foreignl0001", 11)
		if n == "tap-foreignl" || n != linkNames(LinkTAP, "foreignl0001")[1] {
			t.Errorf("attach took %s next to a foreign link", n)
		}
		if _, err := tp.hh.LinkByName("tap-foreignl"); err != nil {
			t.Errorf("the foreign link is gone: %v", err)
		}
	})
	t.Run("veth", func(t *testing.T) {
		tp := newTopo(t, LinkVeth)
		ctx := context.Background()
		must(t, tp.m.Setup(ctx))
		la := netlink.NewLinkAttrs()
		la.Name, la.Group = "vethcrashvet", PortGroup
		must(t, tp.hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "vethcrashpeer"}))
		links, err := tp.m.Links(ctx)
		must(t, err)
		if len(links) != 1 || links[0].Name != "vethcrashvet" || links[0].SandboxID != "" {
			t.Errorf("orphan not listed for the reconciler: %+v", links)
		}
		if n := tp.attach(t, "crashvet0001", 10); n != "vethcrashvet" {
			t.Errorf("orphan veth not replaced: got %s", n)
		}
		if _, err := tp.hh.LinkByName("vethcrashpeer"); !isLinkNotFound(err) {
			t.Errorf("the orphan's peer survived: %v", err)
		}
		tp.guestWorks(t, LinkVeth, "crashvet0001", "vethcrashvet", 10)
	})
}

func TestSetupReadoptsRunningSandboxes(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	name := tp.attach(t, "restart00001", 10)
	// A new manager process: same options, fresh handles, Setup again.
	m2, err := New(tp.m.opts)
	must(t, err)
	defer m2.Close()
	must(t, m2.Setup(ctx))
	if es := tp.entries(t)[name]; len(es) != 1 || es[0].ip.String() != "172.16.0.10" {
		t.Errorf("entries after restart: %+v", tp.entries(t))
	}
	tp.guestWorks(t, LinkVeth, "restart00001", name, 10)
	if got, err := m2.Attach(ctx, "restart00001", guestLease("restart00001", 10)); err != nil || got != name {
		t.Errorf("re-attach after restart: %s, %v", got, err)
	}
}

func TestTeardown(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	tp.attach(t, "teardown0001", 10)
	tapM, err := New(Options{Bridge: "br0", BridgeIP: testBridgeIP, Kind: LinkTAP, HostNS: tp.host, NetnsPrefix: tp.m.opts.NetnsPrefix})
	must(t, err)
	defer tapM.Close()
	if _, err := tapM.Attach(ctx, "teardown0002", guestLease("teardown0002", 11)); err != nil {
		t.Fatal(err)
	}

	must(t, tp.m.Teardown(ctx))
	must(t, tp.m.Teardown(ctx))

	links, err := tp.hh.LinkList()
	must(t, err)
	for _, l := range links {
		if l.Attrs().Name != "lo" && l.Attrs().Name != "wan0" {
			t.Errorf("link %s (%s) left after teardown", l.Attrs().Name, l.Type())
		}
	}
	if tabs := tp.hostTables(t); len(tabs) != 0 {
		t.Errorf("nftables tables left: %v", tabs)
	}
	if ns, err := namedNetns(tp.m.opts.NetnsPrefix); err != nil || len(ns) != 0 {
		t.Errorf("netns left: %v %v", ns, err)
	}
	st, err := tp.m.Status(ctx)
	must(t, err)
	if st.BridgePresent || len(st.Tables) != 0 || st.Rules != 0 || len(st.Links) != 0 || len(st.Namespaces) != 0 {
		t.Errorf("status after teardown: %+v", st)
	}
	// Detach after teardown: everything is already gone.
	must(t, tp.m.Detach(ctx, "teardown0001"))
}

func TestTeardownKeepsAForeignBridge(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	la := netlink.NewLinkAttrs()
	la.Name = "br0"
	must(t, tp.hh.LinkAdd(&netlink.Bridge{LinkAttrs: la}))
	must(t, tp.m.Setup(ctx))
	st, err := tp.m.Status(ctx)
	must(t, err)
	if st.BridgeOwned || !st.BridgeUp {
		t.Errorf("adopted bridge: %+v", st)
	}
	tp.attach(t, "foreignbr001", 10)
	must(t, tp.m.Teardown(ctx))
	if _, err := tp.hh.LinkByName("br0"); err != nil {
		t.Errorf("the operator's bridge was removed: %v", err)
	}
	if l := tp.linksOf(t, "foreignbr001"); len(l) != 0 {
		t.Errorf("links left: %+v", l)
	}
	if tabs := tp.hostTables(t); len(tabs) != 0 {
		t.Errorf("tables left: %v", tabs)
	}
}

func TestConcurrentAttachDetach(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	const n = 12
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("concurrent%02d", i)
			names[i], errs[i] = tp.m.Attach(ctx, id, guestLease(id, byte(10+i)))
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil || seen[names[i]] {
			t.Errorf("attach %d: %s, %v", i, names[i], errs[i])
		}
		seen[names[i]] = true
	}
	if es := tp.entries(t); len(es) != n {
		t.Errorf("%d anti-spoofing entries, want %d", len(es), n)
	}
	tp.guestWorks(t, LinkVeth, "concurrent07", names[7], 17)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = tp.m.Detach(ctx, fmt.Sprintf("concurrent%02d", i))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("detach %d: %v", i, err)
		}
	}
	if links, _ := tp.m.Links(ctx); len(links) != 0 {
		t.Errorf("links left: %+v", links)
	}
	if ns, _ := tp.m.Namespaces(ctx); len(ns) != 0 {
		t.Errorf("netns left: %v", ns)
	}
}

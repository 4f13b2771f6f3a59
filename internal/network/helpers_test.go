package network

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"atelier/internal/ids"
	"atelier/internal/store"
)

// Addresses of the test topology. They exist only inside namespaces the
// tests create.
var (
	testBridgeIP = netip.MustParsePrefix("172.16.0.1/24")
	testGW       = testBridgeIP.Addr()
	hostWanIP    = netip.MustParseAddr("198.51.100.1")
	wanIP        = netip.MustParseAddr("198.51.100.2")
)

const (
	testRegistryPort = 4873
	testManagerPort  = 4000
	okTimeout        = 3 * time.Second
	// A blocked probe waits this long for an answer that, were it allowed,
	// would arrive in well under a millisecond between local namespaces.
	blockedTimeout = 500 * time.Millisecond
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: creates network namespaces, bridges, TAPs and nftables tables")
	}
}

// rootGuard fails the test when it left anything in the root namespace: a
// link named like ours, an Atelier nftables table, a changed ip_forward or
// a named netns with the test's prefix. Register it before anything else so
// that its cleanup runs last.
func rootGuard(t testing.TB, prefix string) {
	t.Helper()
	linksBefore := rootLinkNames(t)
	tablesBefore := rootTables(t)
	fwdBefore, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	t.Cleanup(func() {
		for name := range rootLinkNames(t) {
			if !linksBefore[name] && (strings.HasPrefix(name, "tap-") || strings.HasPrefix(name, "veth") ||
				strings.HasPrefix(name, "br0") || strings.HasPrefix(name, "wan")) {
				t.Errorf("root netns has a new link %s", name)
			}
		}
		for name := range rootTables(t) {
			if !tablesBefore[name] && strings.Contains(name, "atelier") {
				t.Errorf("root netns has a new nftables table %s", name)
			}
		}
		if fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(fwd) != string(fwdBefore) {
			t.Errorf("root ip_forward changed from %q to %q", fwdBefore, fwd)
		}
		left, err := namedNetns(prefix)
		if err != nil {
			t.Error(err)
		}
		if len(left) > 0 {
			t.Errorf("named netns left behind: %v", left)
		}
	})
}

func rootLinkNames(t testing.TB) map[string]bool {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatalf("list root links: %v", err)
	}
	out := map[string]bool{}
	for _, l := range links {
		out[l.Attrs().Name] = true
	}
	return out
}

func rootTables(t testing.TB) map[string]bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	tabs, err := c.ListTables()
	if err != nil {
		t.Fatalf("list root tables: %v", err)
	}
	out := map[string]bool{}
	for _, tb := range tabs {
		out[familyName(tb.Family)+" "+tb.Name] = true
	}
	return out
}

type testLogWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// topo is a test host: a "host" netns holding the bridge (the Manager's
// HostNS) and a "wan" netns reached through wan0 198.51.100.1 <-> wan1
// 198.51.100.2, with the host's default route via the wan side. The wan has
// no route back to the bridge subnet: only NAT lets guests reach it.
type topo struct {
	prefix string
	host   netns.NsHandle
	wan    netns.NsHandle
	hh     *netlink.Handle
	m      *Manager
}

type topoOpt func(*Options)

func newTopo(t testing.TB, kind LinkKind, opts ...topoOpt) *topo {
	t.Helper()
	requireRoot(t)
	prefix := "atlt-" + ids.New(6) + "-"
	rootGuard(t, prefix)
	tp := &topo{prefix: prefix}
	tp.host = newTestNetns(t, prefix+"host")
	tp.wan = newTestNetns(t, prefix+"wan")
	hh, err := netlink.NewHandleAt(tp.host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hh.Close)
	tp.hh = hh
	wh, err := netlink.NewHandleAt(tp.wan)
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()

	la := netlink.NewLinkAttrs()
	la.Name = "wan0"
	must(t, hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "wan1", PeerNamespace: netlink.NsFd(int(tp.wan))}))
	wan0, err := hh.LinkByName("wan0")
	must(t, err)
	wan1, err := wh.LinkByName("wan1")
	must(t, err)
	must(t, hh.AddrAdd(wan0, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(hostWanIP, 24))}))
	must(t, wh.AddrAdd(wan1, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(wanIP, 24))}))
	must(t, hh.LinkSetUp(wan0))
	must(t, wh.LinkSetUp(wan1))
	must(t, hh.RouteAdd(&netlink.Route{LinkIndex: wan0.Attrs().Index, Gw: net.IP(wanIP.AsSlice())}))

	o := Options{
		Bridge:       "br0",
		BridgeIP:     testBridgeIP,
		RegistryPort: testRegistryPort,
		Kind:         kind,
		HostNS:       tp.host,
		NetnsPrefix:  prefix + "g-",
		Log:          slog.New(slog.NewTextHandler(&testLogWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, f := range opts {
		f(&o)
	}
	m, err := New(o)
	must(t, err)
	tp.m = m
	t.Cleanup(func() {
		if err := m.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
		m.Close()
	})
	return tp
}

// newTestNetns creates a named netns with lo up, removed at cleanup.
func newTestNetns(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	path := netnsDir + "/" + name
	must(t, createNamedNetns(path))
	t.Cleanup(func() {
		if err := deleteNamedNetns(path); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := openNamedNetns(path)
	must(t, err)
	t.Cleanup(func() { h.Close() })
	nh, err := netlink.NewHandleAt(h)
	must(t, err)
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	must(t, err)
	must(t, nh.LinkSetUp(lo))
	return h
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// guestLease is the store's lease shape: MAC "06:00:" + the address octets.
func guestLease(id string, last byte) store.Lease {
	ip := netip.AddrFrom4([4]byte{172, 16, 0, last})
	return store.Lease{IP: ip.String(), SandboxID: id, MAC: fmt.Sprintf("06:00:ac:10:00:%02x", last)}
}

func (tp *topo) attach(t testing.TB, id string, last byte) string {
	t.Helper()
	name, err := tp.m.Attach(context.Background(), id, guestLease(id, last))
	if err != nil {
		t.Fatalf("attach %s: %v", id, err)
	}
	return name
}

func (tp *topo) guestNS(t testing.TB, id string) netns.NsHandle {
	t.Helper()
	h, err := openNamedNetns(tp.m.NetnsPath(id))
	must(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

// --- clients and servers inside namespaces ---

func dialIn(ns netns.NsHandle, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := Do(ns, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

func listenIn(t testing.TB, ns netns.NsHandle, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	must(t, Do(ns, func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	}))
	t.Cleanup(func() { l.Close() })
	return l
}

// serveHTTP answers every request with the server's name and the client's
// address, which the NAT test reads back.
func serveHTTP(t testing.TB, ns netns.NsHandle, addr, name string) {
	t.Helper()
	l := listenIn(t, ns, addr)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s", name, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// httpGetIn fetches url with the connection dialled from inside ns.
func httpGetIn(ns netns.NsHandle, url string, timeout time.Duration) (string, error) {
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ns, network, addr, timeout)
			},
		},
	}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// pingIn sends one ICMP echo from inside ns (from src when valid) and waits
// for the matching reply.
func pingIn(ns netns.NsHandle, src, dst netip.Addr, timeout time.Duration) error {
	bind := "0.0.0.0"
	if src.IsValid() {
		bind = src.String()
	}
	var pc net.PacketConn
	if err := Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("ip4:icmp", bind)
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	id, seq := uint16(rand.IntN(65535)+1), uint16(1)
	if _, err := pc.WriteTo(icmpEcho(8, id, seq, []byte("atelier")), &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
		return fmt.Errorf("send echo: %w", err)
	}
	pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ping %s: %w", dst, err)
		}
		b := buf[:n]
		if len(b) >= 8 && b[0] == 0 && binary.BigEndian.Uint16(b[4:]) == id &&
			from.(*net.IPAddr).IP.Equal(net.IP(dst.AsSlice())) {
			return nil
		}
	}
}

// icmpWatch records the ICMP echo requests that reach a namespace.
type icmpWatch struct {
	pc   net.PacketConn
	mu   sync.Mutex
	seen []echoSeen
}

type echoSeen struct {
	from netip.Addr
	id   uint16
}

func watchICMP(t testing.TB, ns netns.NsHandle) *icmpWatch {
	t.Helper()
	w := &icmpWatch{}
	must(t, Do(ns, func() error {
		var err error
		w.pc, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}))
	t.Cleanup(func() { w.pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := w.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 8 && buf[0] == 8 {
				a, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP.To4())
				w.mu.Lock()
				w.seen = append(w.seen, echoSeen{from: a, id: binary.BigEndian.Uint16(buf[4:])})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *icmpWatch) requestsFrom(a netip.Addr) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, s := range w.seen {
		if s.from == a {
			n++
		}
	}
	return n
}

func (w *icmpWatch) sawID(id uint16) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.seen {
		if s.id == id {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds or the timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

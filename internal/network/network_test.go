package network

import (
	"encoding/binary"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"atelier/internal/config"
	"atelier/internal/sandbox"
)

// The lifecycle drives the Manager through its Network seam.
var _ sandbox.Network = (*Manager)(nil)

func TestParseAlias(t *testing.T) {
	cases := []struct {
		alias       string
		ok          bool
		id, ip, mac string
	}{
		{"atelier:abcdefgh1234 172.16.0.10 06:00:ac:10:00:0a", true, "abcdefgh1234", "172.16.0.10", "06:00:ac:10:00:0a"},
		{"atelier:abcdefgh1234", true, "abcdefgh1234", "", ""},
		{"atelier:abcdefgh1234 garbage 06:00:ac:10:00:0a", true, "abcdefgh1234", "", ""},
		{"atelier:abcdefgh1234 fd00::1 06:00:ac:10:00:0a", true, "abcdefgh1234", "", ""},
		{"atelier:bridge", false, "", "", ""},
		{"atelier:ABCDEFGH1234", false, "", "", ""},
		{"atelier:", false, "", "", ""},
		{"docker0", false, "", "", ""},
		{"", false, "", "", ""},
	}
	for _, c := range cases {
		a, ok := parseAlias(c.alias)
		if ok != c.ok || a.id != c.id {
			t.Errorf("%q: ok %v id %q, want %v %q", c.alias, ok, a.id, c.ok, c.id)
			continue
		}
		ip, mac := "", ""
		if a.ip.IsValid() {
			ip, mac = a.ip.String(), a.mac.String()
		}
		if ip != c.ip || mac != c.mac {
			t.Errorf("%q: lease %q %q, want %q %q", c.alias, ip, mac, c.ip, c.mac)
		}
	}
	mac, _ := net.ParseMAC("06:00:ac:10:00:0a")
	in := linkAlias{id: "abcdefgh1234", ip: netip.MustParseAddr("172.16.0.10"), mac: mac}
	out, ok := parseAlias(in.String())
	if !ok || out.id != in.id || out.ip != in.ip || out.mac.String() != in.mac.String() {
		t.Errorf("round trip of %q: %+v %v", in, out, ok)
	}
}

func TestLinkNames(t *testing.T) {
	valid := regexp.MustCompile(`^(tap-|veth)[a-z0-9]{8}$`)
	for _, kind := range []LinkKind{LinkTAP, LinkVeth} {
		a, b := linkNames(kind, "abcdefgh0001"), linkNames(kind, "abcdefgh0002")
		if !slices.Equal(a, linkNames(kind, "abcdefgh0001")) {
			t.Errorf("%s: names are not deterministic", kind)
		}
		if a[0] != b[0] || a[0] != map[LinkKind]string{LinkTAP: "tap-abcdefgh", LinkVeth: "vethabcdefgh"}[kind] {
			t.Errorf("%s: primary names %s %s", kind, a[0], b[0])
		}
		if a[1] == b[1] {
			t.Errorf("%s: ids sharing a prefix share the fallback %s", kind, a[1])
		}
		seen := map[string]bool{}
		for _, n := range a {
			if len(n) > 15 || !valid.MatchString(n) || seen[n] {
				t.Errorf("%s: bad or repeated name %q", kind, n)
			}
			seen[n] = true
		}
	}
}

func TestPortEntryKey(t *testing.T) {
	mac, _ := net.ParseMAC("06:00:ac:10:00:0a")
	e := portEntry{name: "tap-abcdefgh", mac: mac, ip: netip.MustParseAddr("172.16.0.10")}
	k := e.key()
	want := append(append(append([]byte("tap-abcdefgh\x00\x00\x00\x00"), mac...), 0, 0), 172, 16, 0, 10)
	if string(k) != string(want) {
		t.Errorf("key % x, want % x", k, want)
	}
	if got := portOfKey(k); got != e.name {
		t.Errorf("port of key %q", got)
	}
	if len(k) != int(guestsKeyType.Bytes) {
		t.Errorf("key length %d, set key length %d", len(k), guestsKeyType.Bytes)
	}
}

func TestOptionsCheck(t *testing.T) {
	good := Options{Bridge: "br0", BridgeIP: netip.MustParsePrefix("172.16.0.1/24"), RegistryPort: 4873, Kind: LinkTAP}
	cases := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"good", func(*Options) {}, ""},
		{"veth", func(o *Options) { o.Kind = LinkVeth }, ""},
		{"no registry", func(o *Options) { o.RegistryPort = 0 }, ""},
		{"empty bridge", func(o *Options) { o.Bridge = "" }, "bridge name"},
		{"long bridge", func(o *Options) { o.Bridge = "averyverylongbridge" }, "bridge name"},
		{"bridge with slash", func(o *Options) { o.Bridge = "br/0" }, "bridge name"},
		{"no address", func(o *Options) { o.BridgeIP = netip.Prefix{} }, "bridge address"},
		{"IPv6 address", func(o *Options) { o.BridgeIP = netip.MustParsePrefix("fd00::1/64") }, "bridge address"},
		{"network address", func(o *Options) { o.BridgeIP = netip.MustParsePrefix("172.16.0.0/24") }, "network or broadcast"},
		{"broadcast address", func(o *Options) { o.BridgeIP = netip.MustParsePrefix("172.16.0.255/24") }, "network or broadcast"},
		{"/31", func(o *Options) { o.BridgeIP = netip.MustParsePrefix("172.16.0.1/31") }, "prefix length"},
		{"bad registry port", func(o *Options) { o.RegistryPort = 70000 }, "registry port"},
		{"bad allowed port", func(o *Options) { o.AllowedHostPorts = []int{0} }, "allowed host port"},
		{"no kind", func(o *Options) { o.Kind = "" }, "link kind"},
		{"egress allow", func(o *Options) { o.EgressAllow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, ""},
		{"IPv6 egress allow", func(o *Options) { o.EgressAllow = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "egress allow"},
		{"netns prefix with slash", func(o *Options) { o.NetnsPrefix = "../x" }, "netns prefix"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := good
			c.mod(&o)
			err := o.check()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one about %q", err, c.want)
			}
		})
	}
}

func TestOptionsFromConfig(t *testing.T) {
	cfg := config.Default()
	o, err := OptionsFromConfig(cfg, LinkVeth)
	if err != nil {
		t.Fatal(err)
	}
	if o.Bridge != "br0" || o.BridgeIP.String() != "172.16.0.1/24" || o.RegistryPort != 4873 ||
		o.Kind != LinkVeth || o.NetnsPrefix != DefaultNetnsPrefix || o.HostNS.IsOpen() {
		t.Errorf("options %+v", o)
	}
	if len(o.DNSServers) != 2 || o.DNSServers[0].String() != "8.8.8.8" {
		t.Errorf("dns %v", o.DNSServers)
	}
	if err := o.check(); err != nil {
		t.Errorf("options from the default config do not check: %v", err)
	}
	if NetnsPath("abcdefgh1234") != "/var/run/netns/atelier-abcdefgh1234" {
		t.Errorf("netns path %s", NetnsPath("abcdefgh1234"))
	}

	if len(o.EgressAllow) != 0 {
		t.Errorf("default egress allow-list %v", o.EgressAllow)
	}
	allow := config.Default()
	allow.Network.EgressAllowCIDRs = []string{"10.20.0.0/16", "192.168.5.7/32"}
	if o, err := OptionsFromConfig(allow, LinkTAP); err != nil || len(o.EgressAllow) != 2 || o.EgressAllow[1].String() != "192.168.5.7/32" {
		t.Errorf("egress allow-list from config: %v, %v", o.EgressAllow, err)
	}

	bad := config.Default()
	bad.Network.BridgeIP = "172.16.0.0"
	if _, err := OptionsFromConfig(bad, LinkTAP); err == nil {
		t.Error("accepted the network address as bridge")
	}
	bad = config.Default()
	bad.Network.EgressAllowCIDRs = []string{"lan"}
	if _, err := OptionsFromConfig(bad, LinkTAP); err == nil || !strings.Contains(err.Error(), "egressAllowCidrs") {
		t.Errorf("bad egress allow-list: %v", err)
	}
	bad = config.Default()
	bad.Network.DNSServers = []string{"dns.example"}
	if _, err := OptionsFromConfig(bad, LinkTAP); err == nil {
		t.Error("accepted a DNS server name")
	}
}

func TestHostTCPPorts(t *testing.T) {
	m := &Manager{opts: Options{RegistryPort: 4873, AllowedHostPorts: []int{8081, 4873, 8081, 9000}}}
	if got := m.hostTCPPorts(); !slices.Equal(got, []int{4873, 8081, 9000}) {
		t.Errorf("ports %v", got)
	}
	m.opts.RegistryPort = 0
	if got := m.hostTCPPorts(); !slices.Equal(got, []int{8081, 4873, 9000}) {
		t.Errorf("ports without registry %v", got)
	}
}

// inIntervals looks a up in interval set elements the way the kernel does:
// the closest element at or below a decides, and an end element means outside.
func inIntervals(els []nftables.SetElement, a netip.Addr) bool {
	in := false
	for _, e := range els {
		if binary.BigEndian.Uint32(e.Key) > u32(a) {
			break
		}
		in = !e.IntervalEnd
	}
	return in
}

func TestIntervalElements(t *testing.T) {
	els := intervalElements([]netip.Prefix{
		netip.MustParsePrefix("10.2.0.0/16"),
		netip.MustParsePrefix("10.1.0.0/16"), // touches 10.2/16: merged
		netip.MustParsePrefix("10.1.7.0/24"), // inside 10.1/16
		netip.MustParsePrefix("10.9.0.9/32"),
		netip.MustParsePrefix("240.0.0.0/4"), // reaches the top: no end element
		netip.MustParsePrefix("fd00::/8"),    // ignored: guests have no IPv6
	})
	var got []string
	for _, e := range els {
		s := netip.AddrFrom4([4]byte(e.Key)).String()
		if e.IntervalEnd {
			s = "end " + s
		}
		got = append(got, s)
	}
	want := []string{"10.1.0.0", "end 10.3.0.0", "10.9.0.9", "end 10.9.0.10", "240.0.0.0"}
	if !slices.Equal(got, want) {
		t.Errorf("elements %q, want %q", got, want)
	}
	if len(intervalElements(nil)) != 0 {
		t.Error("elements of an empty list")
	}
}

func TestBlockedEgress(t *testing.T) {
	els := intervalElements(blockedEgress)
	for _, s := range []string{
		"0.0.0.0", "0.255.255.255", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.100.100.200",
		"100.127.255.255", "127.0.0.1", "127.255.255.254", "169.254.169.254", "169.254.0.1",
		"172.16.0.1", "172.31.255.255", "192.0.0.170", "192.168.0.1", "192.168.255.255",
		"198.18.0.1", "198.19.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
	} {
		if !inIntervals(els, netip.MustParseAddr(s)) {
			t.Errorf("%s is not blocked", s)
		}
	}
	for _, s := range []string{
		"1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0",
		"126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0",
		"192.0.1.0", "192.0.2.1", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0",
		"198.51.100.2", "203.0.113.1", "223.255.255.255",
	} {
		if inIntervals(els, netip.MustParseAddr(s)) {
			t.Errorf("%s is blocked", s)
		}
	}
}

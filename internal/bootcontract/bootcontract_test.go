package bootcontract

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func guest() Guest {
	return Guest{
		ID:        "abcdef123456",
		IP:        netip.MustParseAddr("172.16.0.10"),
		Gateway:   netip.MustParseAddr("172.16.0.1"),
		PrefixLen: 24,
		DNS:       []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")},
		AgentPort: 9998,
	}
}

func TestCmdline(t *testing.T) {
	got, err := Cmdline(guest())
	if err != nil {
		t.Fatal(err)
	}
	want := "console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce quiet loglevel=1" +
		" init=/sbin/atelier-agent" +
		" ip=172.16.0.10::172.16.0.1:255.255.255.0:sandbox-abcdef123456:eth0:off:8.8.8.8:8.8.4.4" +
		" atelier.id=abcdef123456 atelier.agent_port=9998"
	if got != want {
		t.Fatalf("cmdline\n%s\nwant\n%s", got, want)
	}
}

func TestIPArg(t *testing.T) {
	tests := []struct {
		prefix int
		dns    []string
		want   string
	}{
		{24, []string{"8.8.8.8"}, "172.16.0.10::172.16.0.1:255.255.255.0:sandbox-abcdef123456:eth0:off:8.8.8.8"},
		{16, []string{"1.1.1.1", "9.9.9.9"}, "172.16.0.10::172.16.0.1:255.255.0.0:sandbox-abcdef123456:eth0:off:1.1.1.1:9.9.9.9"},
		{30, []string{"172.16.0.1"}, "172.16.0.10::172.16.0.1:255.255.255.252:sandbox-abcdef123456:eth0:off:172.16.0.1"},
	}
	for _, tt := range tests {
		g := guest()
		g.PrefixLen, g.DNS = tt.prefix, nil
		for _, d := range tt.dns {
			g.DNS = append(g.DNS, netip.MustParseAddr(d))
		}
		if got := IPArg(g); got != tt.want {
			t.Errorf("/%d %v: %q, want %q", tt.prefix, tt.dns, got, tt.want)
		}
	}
}

// What the host writes, the guest reads back: every field, for every
// shape of lease.
func TestRoundTrip(t *testing.T) {
	for _, mod := range []func(*Guest){
		func(*Guest) {},
		func(g *Guest) { g.DNS = g.DNS[:1] },
		func(g *Guest) { g.PrefixLen = 16; g.AgentPort = 1024 },
		func(g *Guest) {
			g.PrefixLen = 30
			g.IP = netip.MustParseAddr("10.1.2.3")
			g.Gateway = netip.MustParseAddr("10.1.2.1")
		},
		func(g *Guest) { g.AgentPort = 0 }, // the default
	} {
		g := guest()
		mod(&g)
		line, err := Cmdline(g)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Parse(line + " " + VMMArgs)
		if err != nil {
			t.Fatalf("Parse(%q): %v", line, err)
		}
		want := g
		if want.AgentPort == 0 {
			want.AgentPort = DefaultAgentPort
		}
		if !reflect.DeepEqual(b.Guest, want) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", line, b.Guest, want)
		}
		if !b.HasIP || b.Hostname != Hostname(g.ID) || b.Device != Interface || b.Init != InitPath {
			t.Errorf("round trip of %q: %+v", line, b)
		}
	}
}

// Nothing a Guest carries can become a second argument (an init= or a
// root=, say): every value is checked before it is formatted.
func TestCmdlineRejects(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Guest)
		want string
	}{
		{"id with an argument", func(g *Guest) { g.ID = "abcdef123456 init=/bin/sh" }, "sandbox id"},
		{"empty id", func(g *Guest) { g.ID = "" }, "sandbox id"},
		{"ipv6 guest", func(g *Guest) { g.IP = netip.MustParseAddr("fd00::2") }, "guest ip"},
		{"no ip", func(g *Guest) { g.IP = netip.Addr{} }, "guest ip"},
		{"no gateway", func(g *Guest) { g.Gateway = netip.Addr{} }, "gateway"},
		{"prefix 0", func(g *Guest) { g.PrefixLen = 0 }, "prefix"},
		{"prefix 33", func(g *Guest) { g.PrefixLen = 33 }, "prefix"},
		{"no dns", func(g *Guest) { g.DNS = nil }, "dns servers"},
		{"three dns", func(g *Guest) { g.DNS = append(g.DNS, netip.MustParseAddr("1.1.1.1")) }, "dns servers"},
		{"ipv6 dns", func(g *Guest) { g.DNS = []netip.Addr{netip.MustParseAddr("2001:db8::53")} }, "IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := guest()
			tt.mod(&g)
			line, err := Cmdline(g)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Cmdline = %q, %v; want an error about %q", line, err, tt.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    Boot
		wantErr string
	}{
		{
			name: "kernel options and unknown fields are ignored",
			line: `console=ttyS0 quiet rw atelier.flavor="big" -- foo`,
			want: Boot{Guest: Guest{AgentPort: DefaultAgentPort}},
		},
		{
			name: "ip without dns or host name",
			line: "ip=172.16.0.10::172.16.0.1:255.255.255.0::eth0:off",
			want: Boot{Guest: Guest{IP: netip.MustParseAddr("172.16.0.10"), Gateway: netip.MustParseAddr("172.16.0.1"), PrefixLen: 24, AgentPort: DefaultAgentPort}, Device: "eth0", HasIP: true},
		},
		{
			name: "bare client address",
			line: "ip=10.0.0.5",
			want: Boot{Guest: Guest{IP: netip.MustParseAddr("10.0.0.5"), PrefixLen: 32, AgentPort: DefaultAgentPort}, HasIP: true},
		},
		{
			name: "ip=off leaves the network alone",
			line: "ip=off atelier.agent_port=1234",
			want: Boot{Guest: Guest{AgentPort: 1234}},
		},
		{name: "non-contiguous mask", line: "ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off", wantErr: "not contiguous"},
		{name: "bad client", line: "ip=nope::10.0.0.1:255.255.255.0::eth0:off", wantErr: "client address"},
		{name: "ipv6 dns", line: "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:off:2001:db8::1", wantErr: "dns server"},
		{name: "bad id", line: "atelier.id=../../x", wantErr: "not a sandbox id"},
		{name: "bad port", line: "atelier.agent_port=0", wantErr: "vsock port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.line)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	line, _ := Cmdline(guest())
	f.Add(line)
	f.Add("ip=1.2.3.4:::::::::::::: atelier.id= atelier.agent_port=99999999999")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := Parse(s)
		if err != nil || !b.HasIP {
			return
		}
		// Whatever parses is a valid address and mask.
		if !b.IP.Is4() || b.PrefixLen < 0 || b.PrefixLen > 32 {
			t.Fatalf("Parse(%q) = %+v", s, b)
		}
	})
}

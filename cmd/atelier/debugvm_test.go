package main

import (
	"net/netip"
	"strings"
	"testing"

	"atelier/internal/bootcontract"
	"atelier/internal/config"
)

// debug-vm prints the boot contract with the sandbox's own values: the
// very command line the driver builds, and where each piece is.
func TestDescribeBootContract(t *testing.T) {
	cfg := config.Default()
	var b strings.Builder
	describeBootContract(&b, cfg, "abcdef123456", "172.16.0.10")
	out := b.String()
	line, err := bootcontract.Cmdline(bootcontract.Guest{
		ID: "abcdef123456", IP: netip.MustParseAddr("172.16.0.10"), Gateway: netip.MustParseAddr("172.16.0.1"),
		PrefixLen: 24, DNS: []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")}, AgentPort: 9998,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"command line  " + line + "\n",
		bootcontract.VMMArgs,
		"/dev/vda (ext4)",
		"host name sandbox-abcdef123456",
		"PID 1         /sbin/atelier-agent",
		"vsock port 9998, host side /var/lib/sandbox/sockets/abcdef123456.vsock",
		"chroot /var/lib/sandbox/jailer/firecracker/abcdef123456/root",
		"DNS 8.8.8.8, 8.8.4.4 in /etc/resolv.conf",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	cfg.Advanced.Server.Firecracker.JailerPath = ""
	b.Reset()
	describeBootContract(&b, cfg, "abcdef123456", "172.16.0.10")
	if !strings.Contains(b.String(), "jailer        off") {
		t.Errorf("no jailer:\n%s", b.String())
	}
	cfg.Sandbox.Runtime = "container"
	b.Reset()
	describeBootContract(&b, cfg, "abcdef123456", "172.16.0.10")
	if !strings.Contains(b.String(), "runs no VM") {
		t.Errorf("container runtime:\n%s", b.String())
	}
}

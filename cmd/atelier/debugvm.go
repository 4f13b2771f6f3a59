package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/agent"
	"atelier/internal/bootcontract"
	"atelier/internal/client"
	"atelier/internal/config"
	"atelier/internal/image/kernel"
	"atelier/internal/runtime/firecracker"
)

func newDebugVMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "debug-vm", Short: "Check that sandboxes boot on this host"}
	var image, command string
	var keep bool
	start := &cobra.Command{
		Use:   "start",
		Short: "Boot a throwaway sandbox, run a command through its agent, print timings, destroy it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			t0 := time.Now()
			v, err := c.CreateSandbox(ctx, client.CreateRequest{Image: image, Vcpus: 1, MemoryMB: 512, Name: "debug-vm"}, true)
			if err != nil {
				return fmt.Errorf("boot test sandbox: %w", err)
			}
			fmt.Fprintf(w, "sandbox %s: %s in %v (ip %s)\n", v.ID, v.Status, time.Since(t0).Round(time.Millisecond), v.IPAddress)
			if !keep {
				defer func() {
					t1 := time.Now()
					if err := c.DeleteSandbox(context.WithoutCancel(ctx), v.ID); err != nil {
						fmt.Fprintf(w, "destroy %s: %v\n", v.ID, err)
						return
					}
					fmt.Fprintf(w, "destroyed in %v\n", time.Since(t1).Round(time.Millisecond))
				}()
			}
			// The contract is the manager's: its mode first, then this
			// host's config (debug-vm runs on the manager's host).
			if h, err := c.Health(ctx); err == nil && h.Mode == "mock" {
				fmt.Fprintln(w, "boot contract: mock mode runs the agent as a local process; no VM boots")
			} else if cfg, err := g.loadConfig(); err == nil {
				describeBootContract(w, cfg, v.ID, v.IPAddress)
			}
			if v.Status != "running" {
				return fmt.Errorf("sandbox %s is %s: %s", v.ID, v.Status, v.Error)
			}
			phases := make([]string, 0, len(v.Timings))
			for k := range v.Timings {
				phases = append(phases, k)
			}
			sort.Strings(phases)
			fmt.Fprintln(w, "phases (ms):")
			for _, k := range phases {
				fmt.Fprintf(w, "  %-8s %8.1f\n", k, v.Timings[k])
			}
			var res agent.ExecResult
			t2 := time.Now()
			if err := c.Exec(ctx, v.ID, agent.ExecRequest{Shell: command, TimeoutMs: 30000}, &res); err != nil {
				return fmt.Errorf("run %q through the agent: %w", command, err)
			}
			fmt.Fprintf(w, "$ %s   (exit %d, %v)\n%s", command, res.ExitCode, time.Since(t2).Round(time.Microsecond), res.Stdout)
			if res.Stderr != "" {
				fmt.Fprint(w, res.Stderr)
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("command exited %d", res.ExitCode)
			}
			return nil
		},
	}
	start.Flags().StringVar(&image, "image", "", "image id (default sandbox.defaultImage)")
	start.Flags().StringVar(&command, "command", "uname -a; id; hostname; ip -4 addr show eth0 2>/dev/null || true; cat /etc/resolv.conf; cat /proc/cmdline", "shell command to run in the sandbox")
	start.Flags().BoolVar(&keep, "keep", false, "keep the sandbox instead of destroying it")
	cmd.AddCommand(start)
	return cmd
}

// describeBootContract prints how a Firecracker sandbox boots under the
// boot contract (internal/bootcontract), with this sandbox's values: what
// the driver tells Firecracker, what Firecracker adds, what the guest's
// PID 1 does and where the agent listens.
func describeBootContract(w io.Writer, cfg *config.Config, id, ip string) {
	if cfg.Sandbox.Runtime != "firecracker" {
		fmt.Fprintf(w, "boot contract: runtime %s runs no VM; the agent is PID 1 of a container and the kernel is the host's\n", cfg.Sandbox.Runtime)
		return
	}
	o := firecracker.OptionsFromConfig(cfg)
	fmt.Fprintln(w, "boot contract (internal/bootcontract; docs/ARCHITECTURE.md):")
	k := o.Kernel
	if b, err := os.ReadFile(kernel.ManifestPath(k)); err == nil {
		var m kernel.Manifest
		if json.Unmarshal(b, &m) == nil {
			k += fmt.Sprintf(" (Linux %s from %s %s, %s config)", m.Release, m.SourcePackage, m.SourceVersion, m.ConfigKind)
		}
	}
	fmt.Fprintf(w, "  kernel        %s\n", k)
	g := bootcontract.Guest{ID: id, PrefixLen: cfg.Network.BridgePrefix, AgentPort: o.AgentPort}
	g.IP, _ = netip.ParseAddr(ip)
	g.Gateway, _ = netip.ParseAddr(cfg.Network.BridgeIP)
	for _, d := range cfg.Network.DNSServers {
		if a, err := netip.ParseAddr(d); err == nil {
			g.DNS = append(g.DNS, a)
		}
	}
	if line, err := bootcontract.Cmdline(g); err == nil {
		fmt.Fprintf(w, "  command line  %s\n", line)
	} else {
		fmt.Fprintf(w, "  command line  (cannot be built for this sandbox: %v)\n", err)
	}
	fmt.Fprintf(w, "                + %s and virtio_mmio.device=... (added by Firecracker)\n", bootcontract.VMMArgs)
	fmt.Fprintf(w, "  root          %s (%s), grown online to the volume's size by PID 1\n", bootcontract.RootDevice, bootcontract.RootFSType)
	fmt.Fprintf(w, "  network       eth0 %s/%d via %s from ip= (the kernel applies it); DNS %s in /etc/resolv.conf\n",
		ip, cfg.Network.BridgePrefix, cfg.Network.BridgeIP, strings.Join(cfg.Network.DNSServers, ", "))
	fmt.Fprintf(w, "  identity      atelier.id=%s, host name %s\n", id, bootcontract.Hostname(id))
	fmt.Fprintf(w, "  PID 1         %s (the agent; init because it is PID 1), log %s\n", bootcontract.InitPath, bootcontract.InitLog)
	fmt.Fprintf(w, "  swap          %s when the image has it\n", bootcontract.SwapFile)
	fmt.Fprintf(w, "  agent         vsock port %d, host side %s\n", o.AgentPort, filepath.Join(o.SocketDir, id+".vsock"))
	fmt.Fprintf(w, "  stop          Ctrl-Alt-Del; PID 1 stops everything, remounts / read-only and powers off within %v\n", bootcontract.ShutdownGrace)
	if o.Jailer != "" {
		fmt.Fprintf(w, "  jailer        %s: chroot %s, own uid/gid from %d + host part of the address, cgroup %s/%s\n",
			o.Jailer, filepath.Join(o.ChrootBase, filepath.Base(o.Binary), id, "root"), o.UIDBase, firecracker.DefaultCgroupParent, id)
	} else {
		fmt.Fprintln(w, "  jailer        off (advanced.server.firecracker.jailerPath is empty): Firecracker runs as root")
	}
}

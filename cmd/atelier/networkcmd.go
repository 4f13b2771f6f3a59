package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"atelier/internal/network"
)

func newNetworkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Set up, inspect or remove the sandbox network (root required)",
		Long: `Set up, inspect or remove the host side of sandbox networking: the bridge
(network.bridgeName with network.bridgeIp/bridgePrefix), IPv4 forwarding on the bridge
and the egress interface only, NAT out of the default route's interface, and Atelier's
nftables tables "inet atelier" and "bridge atelier_bridge" (guest isolation,
anti-spoofing, guest-to-host filter, no private or metadata destinations except
network.egressAllowCidrs and the DNS servers on port 53).
The manager runs the same setup at every start; setup is idempotent and keeps running
sandboxes attached. Every subcommand needs root.`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "setup",
		Short: "Create the bridge and (re)build NAT and the firewall",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.networkManager("network setup")
			if err != nil {
				return err
			}
			defer m.Close()
			if err := m.Setup(cmd.Context()); err != nil {
				return err
			}
			st, err := m.Status(cmd.Context())
			if err != nil {
				return err
			}
			return g.printNetwork(cmd.OutOrStdout(), st)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the bridge, egress, forwarding, firewall and sandbox links",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.networkManager("network status")
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := m.Status(cmd.Context())
			if err != nil {
				return err
			}
			return g.printNetwork(cmd.OutOrStdout(), st)
		},
	})
	var force bool
	teardown := &cobra.Command{
		Use:   "teardown",
		Short: "Remove every sandbox link and netns, the firewall tables and the bridge Atelier created",
		Long: `Remove every sandbox link and named netns, Atelier's nftables tables and the bridge,
when Atelier created it (a bridge the operator made is left in place). Forwarding on
the egress interface is turned off again when setup turned it on; net.ipv4.ip_forward
is never changed. Running sandboxes lose their network, so teardown refuses while
links exist unless --force is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.networkManager("network teardown")
			if err != nil {
				return err
			}
			defer m.Close()
			ctx := context.WithoutCancel(cmd.Context())
			links, err := m.Links(ctx)
			if err != nil {
				return err
			}
			if len(links) > 0 && !force {
				return fmt.Errorf("%d sandbox links exist (running sandboxes would lose their network); pass --force to remove them", len(links))
			}
			if err := m.Teardown(ctx); err != nil {
				return err
			}
			st, err := m.Status(ctx)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d sandbox links and the firewall tables\n", len(links))
			if st.BridgePresent {
				fmt.Fprintf(cmd.OutOrStdout(), "bridge %s left in place: Atelier did not create it\n", st.Bridge)
			}
			return nil
		},
	}
	teardown.Flags().BoolVar(&force, "force", false, "remove the network even while sandbox links exist")
	cmd.AddCommand(teardown)
	return cmd
}

// networkManager checks for root before anything else: every step changes
// or reads root-only kernel state (links, nftables, /proc/sys).
func (g *globals) networkManager(what string) (*network.Manager, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("atelier %s must run as root: it manages the host's bridge, links and nftables firewall (try sudo)", what)
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	kind := network.LinkTAP
	if cfg.Sandbox.Runtime == "container" {
		kind = network.LinkVeth
	}
	opts, err := network.OptionsFromConfig(cfg, kind)
	if err != nil {
		return nil, err
	}
	opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return network.New(opts)
}

func (g *globals) printNetwork(w io.Writer, st network.Status) error {
	if g.json {
		return printJSON(w, st)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	bridge := "missing (run: atelier network setup)"
	if st.BridgePresent {
		state := "down"
		if st.BridgeUp {
			state = "up"
		}
		owner := "created by atelier"
		if !st.BridgeOwned {
			owner = "not created by atelier"
		}
		addrs := strings.Join(st.BridgeAddrs, ", ")
		if addrs == "" {
			addrs = "no address"
		}
		bridge = fmt.Sprintf("%s, %s, %s", state, addrs, owner)
	}
	fmt.Fprintf(tw, "bridge:\t%s %s\n", st.Bridge, bridge)
	egress := st.Egress
	if egress == "" {
		egress = "none: " + st.EgressError
	}
	fmt.Fprintf(tw, "egress:\t%s\n", egress)
	fmt.Fprintf(tw, "forwarding:\tbridge %s, egress %s, host-wide ip_forward %s\n",
		onOff(st.BridgeForwarding), onOff(st.EgressForwarding), onOff(st.IPForward))
	if st.RoutingGuard {
		fmt.Fprintf(tw, "routing from egress:\tonly to the bridge (the host is not a router)\n")
	} else if st.IPForward {
		fmt.Fprintf(tw, "routing from egress:\tleft to the host's firewall (ip_forward is on host-wide)\n")
	}
	if st.BridgeNFCallIptables != "" {
		fmt.Fprintf(tw, "bridge-nf-call-iptables:\t%s (isolation does not depend on it)\n", st.BridgeNFCallIptables)
	}
	tables := "none (run: atelier network setup)"
	if len(st.Tables) > 0 {
		tables = fmt.Sprintf("%s (%d rules)", strings.Join(st.Tables, ", "), st.Rules)
	}
	fmt.Fprintf(tw, "firewall:\t%s\n", tables)
	d := st.Drops
	fmt.Fprintf(tw, "dropped packets:\tspoofed %d, guest-to-guest %d, guest-to-host %d, guest-to-private %d, other forward %d, routed from egress %d\n",
		d.Spoofed, d.GuestToGuest, d.GuestToHost, d.Private, d.Forward, d.Routed)
	fmt.Fprintf(tw, "sandbox links:\t%d\n", len(st.Links))
	tw.Flush()
	if len(st.Links) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nLINK\tSANDBOX\tKIND\tIP\tMAC\tSTATE\tISOLATED")
		for _, l := range st.Links {
			id := l.SandboxID
			if id == "" {
				id = "(orphan)"
			}
			state := "down"
			if l.Up {
				state = "up"
			}
			if l.Master == "" {
				state += ", no bridge"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, id, l.Kind, networkDash(l.IP), networkDash(l.MAC), state, onOff(l.Isolated))
		}
		tw.Flush()
	}
	return nil
}

func networkDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/client"
	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// client picks the manager: --url/ATELIER_URL, else the local root socket when
// this user can open it, else the TCP port from the config.
// forEachID checks every id before acting on any, then runs fn on each in
// turn, stopping at the first error.
func (g *globals) forEachID(ids []string, fn func(c *client.Client, id string) error) error {
	for _, id := range ids {
		if err := checkID(id); err != nil {
			return err
		}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := fn(c, id); err != nil {
			return err
		}
	}
	return nil
}

func (g *globals) client() (*client.Client, error) {
	if g.url != "" {
		return client.New(g.url, g.token)
	}
	cfg, err := g.loadConfig()
	if err != nil {
		// The CLI can still reach a manager on the defaults.
		cfg = config.Default()
	}
	if g.token == "" {
		if fi, err := os.Stat(cfg.Server.SocketPath); err == nil && fi.Mode()&os.ModeSocket != 0 && canWrite(cfg.Server.SocketPath) {
			return client.New("unix://"+cfg.Server.SocketPath, "")
		}
	}
	host := cfg.Server.Host
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return client.New("http://"+host+":"+strconv.Itoa(cfg.Server.Port), g.token)
}

func canWrite(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	if os.Getuid() == 0 {
		return true
	}
	return fi.Mode().Perm()&0o002 != 0
}

func checkID(id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("invalid sandbox id %q: expected 12 characters [a-z0-9]", id)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printSandboxes(w io.Writer, list []sandbox.View) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tIMAGE\tVCPUS\tMEMORY\tIP\tAGE")
	for _, v := range list {
		name := v.Name
		if name == "" {
			name = "-"
		}
		ip := v.IPAddress
		if ip == "" {
			ip = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", v.ID, name, v.Status, v.Image, v.Vcpus, v.MemoryMB, ip, age(v.CreatedAt))
	}
	tw.Flush()
}

func printSandbox(w io.Writer, v sandbox.View) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("ID", v.ID)
	row("Name", v.Name)
	row("Status", string(v.Status))
	row("Image", v.Image)
	row("vCPUs", strconv.Itoa(v.Vcpus))
	row("Memory", strconv.Itoa(v.MemoryMB)+" MiB")
	row("IP", v.IPAddress)
	row("MAC", v.MACAddress)
	row("VS Code", v.URLs.VSCode)
	row("OpenCode", v.URLs.OpenCode)
	row("SSH", v.URLs.SSH)
	row("Error", v.Error)
	if len(v.Timings) > 0 {
		var parts []string
		for k, ms := range v.Timings {
			parts = append(parts, fmt.Sprintf("%s=%.1fms", k, ms))
		}
		sort.Strings(parts)
		row("Timings", strings.Join(parts, " "))
	}
	row("Created", v.CreatedAt.Format(time.RFC3339))
	tw.Flush()
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newSandboxCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sandbox", Aliases: []string{"sandboxes", "sb"}, Short: "Create, list and control sandboxes"}
	ctx := func(c *cobra.Command) context.Context { return c.Context() }

	var req client.CreateRequest
	var noWait bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and wait until it runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.CreateSandbox(ctx(cmd), req, !noWait)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			printSandbox(cmd.OutOrStdout(), v)
			if v.Status == "error" {
				return fmt.Errorf("sandbox %s failed: %s", v.ID, v.Error)
			}
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&req.Image, "image", "", "image id (default sandbox.defaultImage)")
	f.IntVar(&req.Vcpus, "vcpus", 0, "virtual CPUs, 1-8 (default sandbox.defaultVcpus)")
	f.IntVar(&req.MemoryMB, "memory", 0, "memory in MiB, 512-16384 (default sandbox.defaultMemoryMb)")
	f.StringVar(&req.Name, "name", "", "optional name (a DNS label)")
	f.StringVar(&req.WorkspaceID, "workspace", "", "optional workspace id")
	f.BoolVar(&noWait, "no-wait", false, "return as soon as the sandbox is queued")

	var status string
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vs, err := c.ListSandboxes(ctx(cmd), status)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), vs)
			}
			printSandboxes(cmd.OutOrStdout(), vs)
			return nil
		},
	}
	list.Flags().StringVar(&status, "status", "", "only this status (creating, running, stopping, stopped, starting, error, destroying)")

	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkID(args[0]); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.GetSandbox(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			printSandbox(cmd.OutOrStdout(), v)
			return nil
		},
	}

	action := func(name, short string) *cobra.Command {
		return &cobra.Command{
			Use:   name + " ID...",
			Short: short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.forEachID(args, func(c *client.Client, id string) error {
					v, err := c.Action(ctx(cmd), id, name)
					if err != nil {
						return fmt.Errorf("%s %s: %w", name, id, err)
					}
					if g.json {
						return printJSON(cmd.OutOrStdout(), v)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", v.ID, v.Status)
					return nil
				})
			},
		}
	}

	rm := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"delete", "destroy"},
		Short:   "Destroy sandboxes",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.forEachID(args, func(c *client.Client, id string) error {
				if err := c.DeleteSandbox(ctx(cmd), id); err != nil {
					return fmt.Errorf("rm %s: %w", id, err)
				}
				if !g.json {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\tdestroyed\n", id)
				}
				return nil
			})
		},
	}
	cmd.AddCommand(create, list, get, action("stop", "Stop running sandboxes"), action("start", "Start stopped sandboxes"),
		action("restart", "Restart running sandboxes"), rm)
	return cmd
}

func newManagerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "manager", Short: "Inspect the running manager"}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Check the manager's health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.Health(cmd.Context())
			if err != nil {
				return fmt.Errorf("manager unreachable: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), h)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "status:  %s\nmode:    %s\nversion: %s\nuptime:  %ds\n", h.Status, h.Mode, h.Version, h.UptimeSeconds)
			for k, v := range h.Checks {
				fmt.Fprintf(w, "  %-10s %s\n", k, v)
			}
			if h.Status != "ok" {
				return fmt.Errorf("manager is %s", h.Status)
			}
			return nil
		},
	})
	return cmd
}

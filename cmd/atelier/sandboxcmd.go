package main

import (
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
	"atelier/internal/sandbox"
)

// client picks the manager: --url/ATELIER_URL, else the local root socket when
// this user can open it, else the TCP port from the config.
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
		if v.Pooled {
			// An admin sees the warm pool (sandbox.pool.size) too.
			name = "(pool)"
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
	// URLs appear once the sandbox has run (not while it is first created).
	if u := v.URLs; u != nil {
		row("VS Code", u.VSCode)
		row("OpenCode", u.OpenCode)
		row("Browser", u.Browser)
		row("SSH", u.SSH)
	}
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

// createFlags name the create flags after the API's fields, for errors.
var createFlags = map[string]string{"image": "--image", "vcpus": "--vcpus", "memoryMb": "--memory", "name": "--name", "workspaceId": "--workspace"}

func newSandboxCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sandbox", Aliases: []string{"sandboxes", "sb"}, Short: "Create, list, control and use sandboxes",
		Long: "Create, list, control and use sandboxes. Wherever a command takes a sandbox, its id or its name will do."}

	var req client.CreateRequest
	var noWait, quiet bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and wait until it runs",
		Long: "Create a sandbox and wait until it runs, showing progress on stderr; print it (--json: the API's sandbox object).\n" +
			"With --no-wait, print it as soon as it is queued.",
		Example: "  atelier sandbox create --name demo\n  atelier sandbox create --vcpus 4 --memory 8192 --no-wait",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if req.WorkspaceID != "" {
				// Users type the workspace's name; the API takes its id.
				w, err := g.workspace(ctx, req.WorkspaceID)
				if err != nil {
					return fmt.Errorf("--workspace: %w", err)
				}
				req.WorkspaceID = w.ID
			}
			v, err := c.CreateSandbox(ctx, req, false)
			if err != nil {
				return flagError(err, createFlags)
			}
			if !noWait {
				progressTo := cmd.ErrOrStderr()
				if quiet {
					progressTo = io.Discard
				}
				p := startProgress(progressTo, "creating sandbox "+label(v))
				for v.Status == "creating" {
					select {
					case <-ctx.Done():
						p.end()
						return ctx.Err()
					case <-time.After(150 * time.Millisecond):
					}
					if v, err = c.GetSandbox(ctx, v.ID); err != nil {
						p.end()
						return err
					}
				}
				p.end()
			}
			switch {
			case quiet:
				fmt.Fprintln(cmd.OutOrStdout(), v.ID)
			case g.json:
				if err := printJSON(cmd.OutOrStdout(), v); err != nil {
					return err
				}
			default:
				printSandbox(cmd.OutOrStdout(), v)
			}
			if v.Status == "error" {
				return fmt.Errorf("sandbox %s failed: %s", label(v), v.Error)
			}
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&req.Image, "image", "", "image id (default sandbox.defaultImage)")
	f.IntVar(&req.Vcpus, "vcpus", 0, "virtual CPUs, 1-8 (default sandbox.defaultVcpus)")
	f.IntVar(&req.MemoryMB, "memory", 0, "memory in MiB, 512-16384 (default sandbox.defaultMemoryMb)")
	f.StringVar(&req.Name, "name", "", "optional name, unique among your sandboxes (a DNS label); usable wherever an id is")
	f.StringVar(&req.WorkspaceID, "workspace", "", "optional workspace, by name or id: its sandboxes are cloned and set up from it")
	f.BoolVar(&noWait, "no-wait", false, "return as soon as the sandbox is queued")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the id (for scripts: id=$(atelier sandbox create -q))")

	var status string
	var listQuiet bool
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List sandboxes",
		Long:    "List your sandboxes (an admin's: everyone's). --json prints an array of the API's sandbox objects.",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vs, err := c.ListSandboxes(cmd.Context(), status, "")
			if err != nil {
				return flagError(err, map[string]string{"status": "--status"})
			}
			if listQuiet {
				for _, v := range vs {
					fmt.Fprintln(cmd.OutOrStdout(), v.ID)
				}
				return nil
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), vs)
			}
			printSandboxes(cmd.OutOrStdout(), vs)
			return nil
		},
	}
	list.Flags().BoolVarP(&listQuiet, "quiet", "q", false, "print only the ids")
	list.Flags().StringVar(&status, "status", "", "only this status (creating, running, stopping, stopped, starting, error, destroying)")

	get := &cobra.Command{
		Use:               "get ID|NAME",
		Short:             "Show one sandbox",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, v, err := g.sandboxArg(cmd.Context(), args[0])
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

	action := func(name, short, doing, done string) *cobra.Command {
		return &cobra.Command{
			Use:               name + " ID|NAME...",
			Short:             short,
			Long:              short + ". Every argument is checked before any sandbox is acted on. --json prints an array of the sandboxes afterwards.",
			Args:              cobra.MinimumNArgs(1),
			ValidArgsFunction: g.completeSandboxes(0),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				vs, err := resolveAll(cmd.Context(), c, args)
				if err != nil {
					return err
				}
				var out []sandbox.View
				for _, v := range vs {
					p := startProgress(cmd.ErrOrStderr(), doing+" "+label(v))
					nv, err := c.Action(cmd.Context(), v.ID, name)
					d := p.end()
					if err != nil {
						return err
					}
					out = append(out, nv)
					if !g.json {
						fmt.Fprintf(cmd.OutOrStdout(), "%s %s in %.1fs\n", done, label(nv), d.Seconds())
					}
					if nv.Status == "error" {
						return fmt.Errorf("sandbox %s failed: %s", label(nv), nv.Error)
					}
				}
				if g.json {
					return printJSON(cmd.OutOrStdout(), out)
				}
				return nil
			},
		}
	}

	rm := &cobra.Command{
		Use:               "rm ID|NAME...",
		Aliases:           []string{"delete", "destroy"},
		Short:             "Destroy sandboxes",
		Long:              "Destroy sandboxes and everything they hold. Every argument is checked before any is destroyed. --json prints an array of {id, name, destroyed}.",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: g.completeSandboxes(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vs, err := resolveAll(cmd.Context(), c, args)
			if err != nil {
				return err
			}
			type removed struct {
				ID        string `json:"id"`
				Name      string `json:"name,omitempty"`
				Destroyed bool   `json:"destroyed"`
			}
			var out []removed
			for _, v := range vs {
				if err := c.DeleteSandbox(cmd.Context(), v.ID); err != nil {
					return fmt.Errorf("remove %s: %w", label(v), err)
				}
				out = append(out, removed{v.ID, v.Name, true})
				if !g.json {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", label(v))
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, get,
		action("stop", "Stop running sandboxes (their disks are kept)", "stopping", "stopped"),
		action("start", "Start stopped sandboxes", "starting", "started"),
		action("restart", "Restart running sandboxes", "restarting", "restarted"), rm,
		newExecCmd(g), newShellCmd(g), newCpCmd(g), newLogsCmd(g), newRoutesCmd(g), newExposeCmd(g), newUnexposeCmd(g), newDevCmd(g), newSyncConfigCmd(g),
		newResizeCmd(g), newPromoteCmd(g))
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
	cmd.AddCommand(&cobra.Command{
		Use:   "config",
		Short: "Print the running manager's effective configuration, secrets redacted (admin)",
		Long: "Print the configuration the running manager uses: its defaults, config file and ATELIER_* variables.\n" +
			"atelier config show prints what this shell would load instead; they differ when the manager was started\n" +
			"with other variables, as make run does.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var out map[string]any
			if err := c.Do(cmd.Context(), "GET", "/api/system/config", nil, &out); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	})
	return cmd
}

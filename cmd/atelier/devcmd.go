package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/agent"
	"atelier/internal/client"
)

func printRoutes(w io.Writer, rs []client.Route) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "URL\tKIND\tNAME\tPORT\tACCESS")
	for _, r := range rs {
		name := r.Name
		if r.Alias != "" {
			name += " (alias " + r.Alias + ")"
		}
		if name == "" {
			name = "-"
		}
		access := "owner login"
		if r.Public {
			access = "public"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.URL, r.Kind, name, r.Port, access)
	}
	tw.Flush()
}

func newRoutesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "routes ID|NAME",
		Short:             "List a sandbox's hosts at the edge, with their URLs",
		Long:              "List a sandbox's hosts: its tools and its exposed dev commands. --json prints an array of the API's route objects.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rs, err := c.Routes(cmd.Context(), v.ID)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), rs)
			}
			printRoutes(cmd.OutOrStdout(), rs)
			return nil
		},
	}
}

var exposeFlags = map[string]string{"port": "--port", "aliases": "--alias", "default": "--default", "public": "--public"}

func newExposeCmd(g *globals) *cobra.Command {
	var req client.ExposeRequest
	var aliases []string
	cmd := &cobra.Command{
		Use:   "expose ID|NAME DEV",
		Short: "Give a dev command its hosts at the edge (dev-DEV-ID…)",
		Long: "Serve the dev command DEV at dev-DEV-ID (and dev-ID with --default, and dev-DEV-ALIAS-ID per --alias),\n" +
			"replacing its previous hosts. Without --port, the port the command was started with. Hosts need the\n" +
			"owner's login unless --public. They survive restarts of the command, the sandbox and the manager.\n" +
			"--json prints an array of the API's route objects.",
		Example:           "  atelier sandbox expose demo web --default\n  atelier sandbox expose demo web --port 5173 --alias api=8000",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range aliases {
				name, port, ok := strings.Cut(a, "=")
				n, err := strconv.Atoi(port)
				if !ok || name == "" || err != nil {
					return fmt.Errorf("--alias %q: expected NAME=PORT, e.g. api=8000", a)
				}
				req.Aliases = append(req.Aliases, client.ExposeAlias{Alias: name, Port: n})
			}
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rs, err := c.Expose(cmd.Context(), v.ID, args[1], req)
			if err != nil {
				return flagError(err, exposeFlags)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), rs)
			}
			printRoutes(cmd.OutOrStdout(), rs)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&req.Port, "port", 0, "guest port (default: the port the dev command was started with)")
	f.StringArrayVar(&aliases, "alias", nil, "NAME=PORT: also serve PORT at dev-DEV-NAME-ID (repeatable)")
	f.BoolVar(&req.Default, "default", false, "also serve it at dev-ID")
	f.BoolVar(&req.Public, "public", false, "reachable by anyone with the URL, without login")
	return cmd
}

func newUnexposeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "unexpose ID|NAME DEV",
		Short:             "Remove a dev command's hosts",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := c.Unexpose(cmd.Context(), v.ID, args[1]); err != nil {
				return err
			}
			if !g.json {
				fmt.Fprintf(cmd.OutOrStdout(), "removed the hosts of %s in %s\n", args[1], label(v))
			}
			return nil
		},
	}
}

func printProcesses(w io.Writer, ps []agent.ProcessStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tPORT\tPID\tRESTARTS\tCOMMAND")
	for _, p := range ps {
		port, pid := "-", "-"
		if p.Port > 0 {
			port = strconv.Itoa(p.Port)
		}
		if p.PID > 0 {
			pid = strconv.Itoa(p.PID)
		}
		command := p.Shell
		if command == "" {
			command = strings.Join(p.Argv, " ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Name, p.Kind, p.State, port, pid, p.Restarts, command)
	}
	tw.Flush()
}

var devStartFlags = map[string]string{"port": "--port", "restart": "--restart", "cwd": "--workdir", "user": "--user", "env": "--env", "maxRestarts": "--max-restarts"}

func newDevCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Start, stop and list a sandbox's dev commands (dev servers)"}

	var spec agent.ProcessSpec
	var env []string
	start := &cobra.Command{
		Use:   "start ID|NAME DEV [flags] -- COMMAND [ARG...]",
		Short: "Start a dev command (a supervised process with its log), e.g. a dev server",
		Long: "Start COMMAND (as is, no shell: use -- sh -c '...' for one) as the dev command DEV. Its output goes to\n" +
			"its log (atelier sandbox logs ID DEV -f). --port is the port it serves: exported as PORT, and the\n" +
			"port atelier sandbox expose routes to. --json prints the API's process object.",
		Example:           "  atelier sandbox dev start demo web --port 5173 -- npm run dev",
		Args:              cobra.MinimumNArgs(3),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 2 {
				return errors.New("put the command after --: atelier sandbox dev start ID|NAME DEV -- COMMAND [ARG...]")
			}
			spec.Argv = args[2:]
			spec.Env = map[string]string{}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--env %q: expected KEY=VALUE", kv)
				}
				spec.Env[k] = v
			}
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var st agent.ProcessStatus
			if err := c.Agent(cmd.Context(), "POST", v.ID, "/dev/"+url.PathEscape(args[1])+"/start", spec, &st); err != nil {
				return flagError(err, devStartFlags)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "started %s in %s (pid %d", st.Name, label(v), st.PID)
			if st.Port > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), ", port %d; atelier sandbox expose %s %s gives it a URL", st.Port, args[0], st.Name)
			}
			fmt.Fprintln(cmd.OutOrStdout(), ")")
			return nil
		},
	}
	f := start.Flags()
	f.IntVar(&spec.Port, "port", 0, "the port it serves")
	f.StringVarP(&spec.Cwd, "workdir", "w", "", "working directory (default the user's home)")
	f.StringVarP(&spec.User, "user", "u", "", "user to run as (default the agent's user)")
	f.StringArrayVarP(&env, "env", "e", nil, "KEY=VALUE added to the environment (repeatable)")
	f.StringVar(&spec.Restart, "restart", "", "restart policy: no (default), on-failure or always")
	f.IntVar(&spec.MaxRestarts, "max-restarts", 0, "bound on automatic restarts (0: unlimited, with back-off)")

	stop := &cobra.Command{
		Use:               "stop ID|NAME DEV",
		Short:             "Stop a dev command (SIGTERM to its process group, then SIGKILL)",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var st agent.ProcessStatus
			if err := c.Agent(cmd.Context(), "POST", v.ID, "/dev/"+url.PathEscape(args[1])+"/stop", nil, &st); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stopped %s in %s\n", st.Name, label(v))
			return nil
		},
	}

	list := &cobra.Command{
		Use:               "list ID|NAME",
		Aliases:           []string{"ls"},
		Short:             "List a sandbox's dev commands and services",
		Long:              "List a sandbox's dev commands and services. --json prints an array of the API's process objects.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ps, err := processes(cmd.Context(), c, v.ID)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), ps)
			}
			printProcesses(cmd.OutOrStdout(), ps)
			return nil
		},
	}
	cmd.AddCommand(start, stop, list)
	return cmd
}

// processes lists a sandbox's dev commands, then its services.
func processes(ctx context.Context, c *client.Client, id string) ([]agent.ProcessStatus, error) {
	out := []agent.ProcessStatus{}
	for _, kind := range []string{"/dev", "/services"} {
		var l agent.ProcessList
		if err := c.Agent(ctx, "GET", id, kind, nil, &l); err != nil {
			return nil, err
		}
		out = append(out, l.Processes...)
	}
	return out, nil
}

func newLogsCmd(g *globals) *cobra.Command {
	var follow, service, dev bool
	cmd := &cobra.Command{
		Use:   "logs ID|NAME [PROCESS]",
		Short: "Print a dev command's or service's log; -f follows it",
		Long: "Print the log of a dev command or service of the sandbox. PROCESS may be left out when the\n" +
			"sandbox has only one. -f keeps printing what it writes until Ctrl-C.",
		Example:           "  atelier sandbox logs demo web -f",
		Args:              cobra.RangeArgs(1, 2),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if service && dev {
				return errors.New("--service and --dev exclude each other")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			v, err := resolve(ctx, c, args[0])
			if err != nil {
				return err
			}
			ps, err := processes(ctx, c, v.ID)
			if err != nil {
				return err
			}
			var match []agent.ProcessStatus
			for _, p := range ps {
				if (len(args) == 1 || p.Name == args[1]) && (!service || p.Kind == agent.KindService) && (!dev || p.Kind == agent.KindDev) {
					match = append(match, p)
				}
			}
			var names []string
			for _, p := range ps {
				names = append(names, p.Name+" ("+p.Kind+")")
			}
			switch {
			case len(match) == 0 && len(args) == 2:
				return fmt.Errorf("%s has no dev command or service %q (it has: %s)", label(v), args[1], orNone(names))
			case len(match) == 0:
				return fmt.Errorf("%s has no dev command or service yet (atelier sandbox dev start)", label(v))
			case len(match) > 1 && len(args) == 2:
				return fmt.Errorf("%s has both a dev command and a service named %q: pass --dev or --service", label(v), args[1])
			case len(match) > 1:
				return fmt.Errorf("%s has several: %s; name one", label(v), strings.Join(names, ", "))
			}
			p := match[0]
			prefix := "/dev/"
			if p.Kind == agent.KindService {
				prefix = "/services/"
			}
			return followLog(ctx, c, v.ID, prefix+url.PathEscape(p.Name)+"/logs", follow, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until Ctrl-C")
	cmd.Flags().BoolVar(&service, "service", false, "PROCESS is a service")
	cmd.Flags().BoolVar(&dev, "dev", false, "PROCESS is a dev command")
	return cmd
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// followLog prints a log from its start and, with follow, polls for more.
func followLog(ctx context.Context, c *client.Client, id, path string, follow bool, out, warn io.Writer) error {
	var off int64
	for {
		var ch agent.LogChunk
		err := c.Agent(ctx, "GET", id, path+"?offset="+strconv.FormatInt(off, 10)+"&limit="+strconv.Itoa(agent.MaxLogReadLimit), nil, &ch)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		if ch.Offset > off && off > 0 {
			fmt.Fprintf(warn, "atelier: %d bytes of the log were rotated away before they were read\n", ch.Offset-off)
		}
		if _, err := io.WriteString(out, ch.Content); err != nil {
			return err
		}
		more := ch.NextOffset < ch.Size
		off = ch.NextOffset
		if more {
			continue
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

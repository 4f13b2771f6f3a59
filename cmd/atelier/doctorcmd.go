package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/hostcheck"
	"atelier/internal/hostcmd"
	"atelier/internal/systemd"
)

func newDoctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the host and the running manager; exit 1 when something is wrong",
		Long: `Run init's host checks (kernel, KVM, device-mapper, cgroups, user namespaces, disk, ports, DNS)
on this host, then the services (atelier-manager and the boot-time units) and the manager's
health (/health: every failing component by name). Ports held by atelier itself are fine.
Exit status 0 when nothing failed, 1 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			rep := hostcheck.Run(cmd.Context(), cfg, hostcheck.Host{Runtime: cfg.Sandbox.Runtime})
			results := rep.Results
			add := func(r hostcheck.Result) { results = append(results, r) }
			sysd := systemd.Systemctl{R: hostcmd.Exec{}}
			for _, u := range systemd.AllUnits {
				st, err := sysd.IsActive(cmd.Context(), u)
				switch {
				case err != nil:
					add(hostcheck.Result{Name: u, Status: hostcheck.Info, Detail: "systemctl: " + err.Error()})
				case st == "active":
					add(hostcheck.Result{Name: u, Status: hostcheck.OK, Detail: "active"})
				default:
					add(hostcheck.Result{Name: u, Status: hostcheck.Fail, Detail: st, Fix: "atelier manager logs; journalctl -u " + u})
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			v, herr := managerHealth(cfg)(ctx)
			cancel()
			if herr != nil {
				add(hostcheck.Result{Name: "manager health", Status: hostcheck.Fail, Detail: herr.Error(), Fix: "atelier manager logs"})
			} else {
				add(hostcheck.Result{Name: "manager health", Status: hostcheck.OK, Detail: "version " + v + ", every component ready"})
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), results); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					fmt.Fprintf(cmd.OutOrStdout(), "%-5s %-22s %s\n", r.Status, r.Name, r.Detail)
					if r.Fix != "" && r.Status != hostcheck.OK {
						fmt.Fprintf(cmd.OutOrStdout(), "      %-22s fix: %s\n", "", r.Fix)
					}
				}
			}
			for _, r := range results {
				if r.Status == hostcheck.Fail {
					return errors.New("some checks failed")
				}
			}
			return nil
		},
	}
}

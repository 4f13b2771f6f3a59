package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"atelier/internal/config"
	"atelier/internal/hostcheck"
	"atelier/internal/hostcmd"
	"atelier/internal/setup"
)

func newInitCmd(g *globals) *cobra.Command {
	var a setup.Answers
	var yes bool
	var root, binary, kubeDir string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install Atelier on this server: checks, config, packages, network, storage, images, services",
		Long: `Turn a Debian server into a running Atelier, idempotently: rerun it at any time, and every step
that is already done says so. In order: the config file (/etc/atelier/sandbox.config.json, or
--config; a new one gets mode production, a random auth.jwtSecret and the answers given),
host checks (kernel, KVM, device-mapper, cgroups, disk, ports, DNS; the runtime is firecracker
when /dev/kvm answers, else container), Debian packages, the system user atelier-registry (and a check
that no account owns the jailer's uids), data/state/log directories, this binary at
/usr/local/bin/atelier, network and storage setup, Verdaccio, the guest kernel (firecracker) and the default image, the systemd
units (atelier-manager, atelier-network, atelier-storage) enabled and the manager started,
then atelier debug-vm start, and the URLs to open.

Interactive by default; --yes answers from flags (and the existing config) alone.

--kubernetes DIR installs nothing here: it writes the Kustomize deployment of Atelier on a
cluster (sandbox.runtime kubernetes) into DIR from the same flags, for kubectl apply -k DIR.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kubeDir != "" {
				f := cmd.Flags()
				for _, host := range []string{"root", "binary-path", "runtime", "storage-method", "loop-size-gb", "storage-device"} {
					if f.Changed(host) {
						return fmt.Errorf("--%s is about this host; --kubernetes installs nothing here", host)
					}
				}
				return setup.Kubernetes(kubeDir, a, cmd.OutOrStdout())
			}
			if os.Geteuid() != 0 {
				return errors.New("atelier init must run as root: it installs packages, sets up the network and storage and installs services (try sudo)")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			cfgPath := g.configPath()
			f := cmd.Flags()
			if f.Changed("allowed-users") && a.AllowedUsers == nil {
				a.AllowedUsers = []string{}
			}
			if !yes {
				if !term.IsTerminal(int(os.Stdin.Fd())) {
					return errors.New("atelier init needs a terminal to ask its questions; pass --yes with the answers as flags to run unattended")
				}
				if err := askInit(cmd.InOrStdin(), cmd.OutOrStdout(), cfgPath, &a); err != nil {
					return err
				}
			}
			_, err = setup.Run(cmd.Context(), setup.Options{
				Root: root, ConfigFile: cfgPath, Binary: binary, Self: self,
				Runner: hostcmd.Exec{Env: []string{"DEBIAN_FRONTEND=noninteractive"}}, Out: cmd.OutOrStdout(),
				Answers: a, Env: os.Environ(), LookPath: exec.LookPath,
				Health: func(ctx context.Context, cfg *config.Config) error {
					health := managerHealth(cfg)
					ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
					defer cancel()
					for {
						_, err := health(ctx)
						if err == nil {
							return nil
						}
						select {
						case <-ctx.Done():
							return fmt.Errorf("the manager is not healthy after 90s: %w", err)
						case <-time.After(500 * time.Millisecond):
						}
					}
				},
			})
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&yes, "yes", "y", false, "do not ask: use the flags and the existing config")
	f.StringVar(&root, "root", "/", "install under this directory instead of / (image builds, tests)")
	f.StringVar(&binary, "binary-path", setup.DefaultBinary, "where the binary is installed and what the units run")
	f.StringVar(&a.BaseDomain, "domain", "", "base domain (domain.baseDomain), e.g. example.com")
	f.StringVar(&a.TLSEmail, "tls-email", "", "ACME account email (domain.tls.email)")
	f.StringVar(&a.GitHubClientID, "github-client-id", "", "GitHub OAuth app client ID")
	f.StringVar(&a.GitHubClientSecret, "github-client-secret", "", "GitHub OAuth app client secret")
	f.StringVar(&a.AllowedOrg, "allowed-org", "", "GitHub organization whose members may log in")
	f.StringSliceVar(&a.AllowedUsers, "allowed-users", nil, "GitHub users who may log in (comma-separated)")
	f.StringSliceVar(&a.Admins, "admins", nil, "GitHub users with host-wide rights (comma-separated)")
	f.StringVar(&a.Runtime, "runtime", "", "firecracker or container (default: firecracker when KVM works)")
	f.StringVar(&a.StorageMethod, "storage-method", "", "loop, device, lvm or file (default loop, 100 GiB)")
	f.IntVar(&a.LoopSizeGB, "loop-size-gb", 0, "size of the loop pool file in GiB")
	f.StringVar(&a.StorageDevice, "storage-device", "", "block device for --storage-method device")
	f.StringArrayVar(&a.Set, "set", nil, "any other KEY=VALUE (as atelier config set); repeatable")
	f.StringVar(&kubeDir, "kubernetes", "", "write the Kustomize deployment on a cluster into this directory instead of installing on this host")
	return cmd
}

// askInit asks for what a new config needs; an existing config is kept
// unless the operator changes something.
func askInit(in io.Reader, out io.Writer, cfgPath string, a *setup.Answers) error {
	r := bufio.NewReader(in)
	ask := func(q, def string) (string, error) {
		if def != "" {
			fmt.Fprintf(out, "%s [%s]: ", q, def)
		} else {
			fmt.Fprintf(out, "%s: ", q)
		}
		line, err := r.ReadString('\n')
		if err != nil && line == "" {
			return "", fmt.Errorf("no answer: %w", err)
		}
		if line = strings.TrimSpace(line); line == "" {
			return def, nil
		}
		return line, nil
	}
	if _, err := os.Stat(cfgPath); err == nil {
		ans, err := ask(cfgPath+" exists; keep it as it is? (yes/no)", "yes")
		if err != nil {
			return err
		}
		if strings.HasPrefix(strings.ToLower(ans), "y") {
			return nil
		}
	}
	var err error
	fields := []struct {
		q   string
		dst *string
		def func() string
	}{
		{"Base domain (sandboxes get <name>.<domain>)", &a.BaseDomain, func() string { return "" }},
		{"Email for Let's Encrypt", &a.TLSEmail, func() string { return "admin@" + a.BaseDomain }},
		{"GitHub OAuth app client ID", &a.GitHubClientID, func() string { return "" }},
		{"GitHub OAuth app client secret", &a.GitHubClientSecret, func() string { return "" }},
		{"GitHub organization allowed to log in (empty: none)", &a.AllowedOrg, func() string { return "" }},
	}
	for _, f := range fields {
		def := *f.dst
		if def == "" {
			def = f.def()
		}
		if *f.dst, err = ask(f.q, def); err != nil {
			return err
		}
	}
	users, err := ask("GitHub users allowed to log in (comma-separated)", strings.Join(a.AllowedUsers, ","))
	if err != nil {
		return err
	}
	a.AllowedUsers = splitComma(users)
	if a.Runtime == "" {
		rt, why := hostcheck.PickRuntime(hostcheck.Host{})
		fmt.Fprintf(out, "Runtime: %s (%s)\n", rt, why)
	}
	ans, err := ask("Install now? (yes/no)", "yes")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(strings.ToLower(ans), "y") {
		return errors.New("stopped: nothing was changed")
	}
	return nil
}

func splitComma(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

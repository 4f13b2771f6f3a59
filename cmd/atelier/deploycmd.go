package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"atelier/internal/deploy"
	"atelier/internal/hostcmd"
)

func newDeployCmd(g *globals) *cobra.Command {
	var host, userName, key, bin, src, remote string
	var port int
	var updateArgs []string
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "From a developer machine: build, copy to the server over SSH, verify, run atelier update there",
		Long: `Build the atelier binary for the server (CGO_ENABLED=0, GOOS=linux, the server's architecture,
from the module in --src, default the current directory), copy it over SSH to a private temp
directory on the server, check its SHA-256 there, and run "atelier update --binary" on the
server (through sudo -n unless the user is root), streaming its output; the update rolls back
on the server if the new manager is not healthy.

The server comes from --host or SSH_HOST, the user from --user or SSH_USER, the key from
--key or SSH_KEY_PATH; ~/.ssh/config fills HostName, User, Port, IdentityFile and
UserKnownHostsFile for that host. The server's host key must already be in known_hosts:
connect once with ssh and check its fingerprint. --binary sends a binary you built.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			home, _ := os.UserHomeDir()
			local := ""
			if u, err := user.Current(); err == nil {
				local = u.Username
			}
			t, err := deploy.Resolve(host, userName, key, port, home, local)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			ctx := cmd.Context()
			if bin == "" {
				built, cleanup, err := buildForServer(ctx, t, src, out)
				if err != nil {
					return err
				}
				defer cleanup()
				bin = built
			}
			return deploy.Run(ctx, deploy.Options{Target: t, Binary: bin, RemoteAtelier: remote, UpdateArgs: updateArgs, Out: out})
		},
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "", "server (default $SSH_HOST; a ~/.ssh/config alias works)")
	f.StringVar(&userName, "user", "", "SSH user (default $SSH_USER, ~/.ssh/config, then yours)")
	f.StringVar(&key, "key", "", "SSH private key (default $SSH_KEY_PATH, ~/.ssh/config, ~/.ssh/id_ed25519)")
	f.IntVar(&port, "port", 0, "SSH port (default ~/.ssh/config, then 22)")
	f.StringVar(&bin, "binary", "", "send this binary instead of building one")
	f.StringVar(&src, "src", ".", "the Atelier source tree to build")
	f.StringVar(&remote, "remote-atelier", "/usr/local/bin/atelier", "the server's installed atelier, which runs the update")
	f.StringArrayVar(&updateArgs, "update-arg", nil, "extra argument for the remote atelier update (e.g. --rebuild-images); repeatable")
	return cmd
}

func buildForServer(ctx context.Context, t deploy.Target, src string, out interface{ Write([]byte) (int, error) }) (string, func(), error) {
	c, err := deploy.Connect(ctx, t, nil)
	if err != nil {
		return "", nil, err
	}
	arch, err := deploy.RemoteArch(c)
	c.Close()
	if err != nil {
		return "", nil, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", nil, fmt.Errorf("building needs the go tool (or pass --binary): %w", err)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", nil, err
	}
	version := "dev"
	if v, err := exec.CommandContext(ctx, "git", "-C", abs, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(v))
	}
	dir, err := os.MkdirTemp("", "atelier-deploy-")
	if err != nil {
		return "", nil, err
	}
	outBin := filepath.Join(dir, "atelier")
	fmt.Fprintf(out, "building atelier %s for linux/%s\n", version, arch)
	if err := deploy.Build(ctx, hostcmd.Exec{}, out, deploy.BuildArgv(goBin, abs, arch, version, outBin)); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return outBin, func() { os.RemoveAll(dir) }, nil
}

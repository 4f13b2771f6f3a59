package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/backup"
	"atelier/internal/config"
	"atelier/internal/server"
)

func (g *globals) configPath() string {
	if g.configFile != "" {
		return g.configFile
	}
	if p := os.Getenv(config.EnvConfigFile); p != "" {
		return p
	}
	return config.DefaultFile
}

func newBackupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backup [FILE]",
		Short: "Write one archive of the database (an online copy), config, secrets key, SSH host key and certificates",
		Long: `Write a gzip'd tar archive holding a consistent copy of the database, taken while the manager
runs (SQLite VACUUM INTO), the config file, {dataDir}/secrets.key, the SSH host key and Caddy's
storage (ACME account and certificates). FILE defaults to atelier-backup-<time>.tar.gz in the
current directory; "-" writes to stdout. The archive is created 0600 and never overwrites a
file: it holds every secret of this host, keep it like the data dir.

Not in the archive: sandbox disks (back them up with the sandboxes stopped: LVM snapshots of
sandbox-vg/sandbox-<id>, or cp --sparse=always of {stateDir}/overlays/<id>.ext4), images and
prebuilds (rebuilt by atelier images), the npm cache and sandbox logs.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if err := backup.CheckSupported(cfg); err != nil {
				return fmt.Errorf("atelier backup: %w", err)
			}
			name := "atelier-backup-" + time.Now().UTC().Format("20060102T150405Z") + ".tar.gz"
			if len(args) == 1 {
				name = args[0]
			}
			var w io.Writer = cmd.OutOrStdout()
			var f *os.File
			if name != "-" {
				f, err = os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					return fmt.Errorf("create backup file: %w", err)
				}
				w = f
			}
			m, err := backup.Create(cmd.Context(), backup.Options{Config: cfg, ConfigFile: g.configPath(), Version: server.Version}, w)
			if f != nil {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(name)
				}
			}
			if err != nil {
				return err
			}
			if name != "-" {
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (mode 0600): %d files\n", name, len(m.Files))
				for _, n := range backup.NotBackedUp {
					fmt.Fprintf(cmd.ErrOrStderr(), "  not included: %s\n", n)
				}
			}
			return nil
		},
	}
}

func newRestoreCmd(g *globals) *cobra.Command {
	var force, skipConfig bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore an archive made by atelier backup (the manager must be stopped)",
		Long: `Restore the database, keys, certificates and config file from an archive made by atelier
backup. Refused while a manager uses the data dir (its socket answers, or a process holds the
database open): run atelier manager stop first. A data dir that already holds a database needs
--force; what is replaced is moved to {dataDir}/restore-replaced/<time>/, not deleted. Files
are restored 0600 in 0700 directories. Sandbox disks are not in archives: restore them
separately before starting the manager, or the reconciler marks their sandboxes failed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			m, err := backup.Restore(cmd.Context(), backup.RestoreOptions{Config: cfg, ConfigFile: g.configPath(), Force: force, SkipConfig: skipConfig}, f)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %d files from a backup of %s taken %s by atelier %s\nstart the manager: atelier manager start\n",
				len(m.Files), m.Hostname, m.Created.Format(time.RFC3339), m.Version)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing database (moved aside first)")
	cmd.Flags().BoolVar(&skipConfig, "skip-config", false, "keep the current config file")
	return cmd
}

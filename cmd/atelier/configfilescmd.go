package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"atelier/internal/client"
	"atelier/internal/guestfiles"
	"atelier/internal/sandbox"
)

// configFilesPath is the API path of the global set, or of the workspace
// --workspace names.
func (g *globals) configFilesPath(ctx context.Context, ws string) (string, error) {
	if ws == "" {
		return "/api/config-files", nil
	}
	w, err := g.workspace(ctx, ws)
	if err != nil {
		return "", err
	}
	return "/api/workspaces/" + w.ID + "/config-files", nil
}

type configFilesList struct {
	Files []guestfiles.File `json:"files"`
}

// cfgFileError names the command's argument for a field the API refused.
func cfgFileError(err error, files []guestfiles.File) error {
	var e *client.Error
	if !errors.As(err, &e) {
		return err
	}
	for _, fe := range e.Errors {
		var i int
		var rest string
		if n, _ := fmt.Sscanf(strings.TrimPrefix(fe.Location, "body."), "files[%d].%s", &i, &rest); n == 2 && i < len(files) {
			return fmt.Errorf("%s of %s: %s", rest, files[i].Path, fe.Message)
		}
	}
	return err
}

func newConfigFilesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config-files", Aliases: []string{"config-file"},
		Short: "Config files pushed into sandboxes: global (admins) or a workspace's (--workspace)",
		Long: "Config files (editor or OpenCode settings, say) are written into every sandbox at create and start and by\n" +
			"atelier sandbox sync-config, as the image user. Paths are ~/... or /etc/.... A workspace's files are laid over\n" +
			"the global ones: .json objects deep-merged, other files replaced. A file the guest changed is kept unless forced."}
	var ws string
	cmd.PersistentFlags().StringVar(&ws, "workspace", "", "the workspace (ID or name) whose files to manage; none: the global files")

	load := func(ctx context.Context) (string, []guestfiles.File, error) {
		path, err := g.configFilesPath(ctx, ws)
		if err != nil {
			return "", nil, err
		}
		c, err := g.client()
		if err != nil {
			return "", nil, err
		}
		var out configFilesList
		err = c.Do(ctx, "GET", path, nil, &out)
		return path, out.Files, err
	}
	save := func(cmd *cobra.Command, path string, files []guestfiles.File) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		if files == nil {
			files = []guestfiles.File{}
		}
		var out configFilesList
		if err := c.Do(cmd.Context(), "PUT", path, configFilesList{Files: files}, &out); err != nil {
			return cfgFileError(err, files)
		}
		if g.json {
			return printJSON(cmd.OutOrStdout(), out)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%d config files\n", len(out.Files))
		return nil
	}

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the config files", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, files, err := load(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				if files == nil {
					files = []guestfiles.File{}
				}
				return printJSON(cmd.OutOrStdout(), files)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PATH\tMODE\tBYTES")
			for _, f := range files {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", f.Path, f.Mode, len(f.Content))
			}
			return tw.Flush()
		},
	}
	var mode string
	set := &cobra.Command{
		Use:   "set GUEST_PATH=LOCAL_FILE...",
		Short: "Add or replace config files, e.g. ~/.config/opencode/opencode.json=./opencode.json",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var add []guestfiles.File
			for _, a := range args {
				guest, local, ok := strings.Cut(a, "=")
				if !ok || guest == "" || local == "" {
					return fmt.Errorf("%q: want GUEST_PATH=LOCAL_FILE", a)
				}
				if err := guestfiles.ValidPath(guest); err != nil {
					return fmt.Errorf("%s: %w", guest, err)
				}
				b, err := os.ReadFile(local)
				if err != nil {
					return fmt.Errorf("%s: %w", guest, err)
				}
				add = append(add, guestfiles.File{Path: guest, Content: string(b), Mode: mode})
			}
			path, files, err := load(cmd.Context())
			if err != nil {
				return err
			}
			for _, f := range add {
				replaced := false
				for i := range files {
					if files[i].Path == f.Path {
						files[i], replaced = f, true
					}
				}
				if !replaced {
					files = append(files, f)
				}
			}
			return save(cmd, path, files)
		},
	}
	set.Flags().StringVar(&mode, "mode", "", "octal permission bits of the files (default 0644)")
	rm := &cobra.Command{
		Use: "rm GUEST_PATH...", Short: "Remove config files from the set (sandboxes keep their copies)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, files, err := load(cmd.Context())
			if err != nil {
				return err
			}
			for _, a := range args {
				n := len(files)
				files = removeFile(files, a)
				if len(files) == n {
					return fmt.Errorf("no config file %s (atelier config-files list shows them)", a)
				}
			}
			return save(cmd, path, files)
		},
	}
	cmd.AddCommand(list, set, rm)
	return cmd
}

func removeFile(files []guestfiles.File, path string) []guestfiles.File {
	out := files[:0:0]
	for _, f := range files {
		if f.Path != path {
			out = append(out, f)
		}
	}
	return out
}

// newSyncConfigCmd is `atelier sandbox sync-config ID|NAME`.
func newSyncConfigCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "sync-config ID|NAME",
		Short: "Push the config files into a running sandbox (files the guest changed are kept unless --force)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var out struct {
				Files []sandbox.ConfigFileResult `json:"files"`
			}
			if err := c.Do(cmd.Context(), "POST", "/api/sandboxes/"+v.ID+"/config-files/sync", map[string]bool{"force": force}, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PATH\tACTION")
			failed, kept := 0, 0
			for _, f := range out.Files {
				action := f.Action
				switch f.Action {
				case sandbox.ConfigFailed:
					failed++
					action += ": " + f.Error
				case sandbox.ConfigKept:
					kept++
					action += " (changed in the sandbox)"
				}
				fmt.Fprintf(tw, "%s\t%s\n", f.Path, action)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if kept > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d files kept as the sandbox changed them; --force overwrites them\n", kept)
			}
			if failed > 0 {
				return fmt.Errorf("%d config files not written", failed)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite files the sandbox changed since the last push")
	return cmd
}

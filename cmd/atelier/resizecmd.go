package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"atelier/internal/sandbox"
)

// newResizeCmd is `atelier sandbox resize ID|NAME --disk-gb N`.
func newResizeCmd(g *globals) *cobra.Command {
	var gb int
	cmd := &cobra.Command{
		Use:   "resize ID|NAME --disk-gb N",
		Short: "Grow a sandbox's disk",
		Long: "Grow a sandbox's disk to N GiB: disks only grow, within quotas.diskGbPerUser. A running sandbox's filesystem " +
			"grows at once where the runtime can (containers), else stop it first; a stopped one grows at its next boot. " +
			"--json prints the API's sandbox object.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeSandboxes(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("disk-gb") {
				return fmt.Errorf("--disk-gb: required: the disk's new size in GiB")
			}
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var out sandbox.View
			err = c.Do(cmd.Context(), "POST", "/api/sandboxes/"+v.ID+"/storage/resize", map[string]int{"sizeGb": gb}, &out)
			if err != nil {
				return flagError(err, map[string]string{"sizeGb": "--disk-gb"})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "disk of %s is %d GiB\n", label(out), out.DiskBytes>>30)
			return nil
		},
	}
	cmd.Flags().IntVar(&gb, "disk-gb", 0, "the disk's new size in GiB (required; at least the current size)")
	return cmd
}

// newPromoteCmd is `atelier sandbox promote ID|NAME`.
func newPromoteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "promote ID|NAME",
		Short: "Save a sandbox's disk as its workspace's prebuild",
		Long: "Save a sandbox's disk as the prebuild new sandboxes of its workspace start from. A running sandbox is " +
			"stopped while its disk is saved, then started again. The previous prebuild is replaced only once the new " +
			"one is complete. --json prints the workspace's prebuild status.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeSandboxes(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, v, err := g.sandboxArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var out map[string]any
			p := startProgress(cmd.ErrOrStderr(), "saving "+label(v)+" as its workspace's prebuild")
			err = c.Do(cmd.Context(), "POST", "/api/sandboxes/"+v.ID+"/promote", nil, &out)
			d := p.end()
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "prebuild of workspace %v saved from %s in %.1fs\n", out["workspaceId"], label(v), d.Seconds())
			return nil
		},
	}
}

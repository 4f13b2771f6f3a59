package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/client"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// resolve finds the sandbox an argument names: an id, else a name (unique
// per owner; an admin who sees several users' sandboxes of that name gets
// an error listing their ids).
func resolve(ctx context.Context, c *client.Client, arg string) (sandbox.View, error) {
	if ids.ValidSandboxID(arg) {
		v, err := c.GetSandbox(ctx, arg)
		if err == nil || !client.IsStatus(err, http.StatusNotFound) {
			return v, err
		}
		// Not an id after all: a name may have the same shape.
	}
	if !ids.ValidDNSLabel(arg) {
		return sandbox.View{}, fmt.Errorf("%q is neither a sandbox id (12 characters [a-z0-9]) nor a name (a DNS label)", arg)
	}
	list, err := c.ListSandboxes(ctx, "", arg)
	if err != nil {
		return sandbox.View{}, err
	}
	switch len(list) {
	case 0:
		return sandbox.View{}, fmt.Errorf("no sandbox %q: no id or name matches (atelier sandbox list shows yours)", arg)
	case 1:
		return list[0], nil
	}
	var which []string
	for _, v := range list {
		which = append(which, v.ID+" (owner "+v.OwnerID+")")
	}
	return sandbox.View{}, fmt.Errorf("the name %q is ambiguous: %s; give an id", arg, strings.Join(which, ", "))
}

// resolveAll resolves every argument before anything acts on one, so a typo
// in the third leaves the first two untouched.
// sandboxArg connects to the manager and resolves one ID|NAME argument, the
// opening of every command that acts on one sandbox.
func (g *globals) sandboxArg(ctx context.Context, arg string) (*client.Client, sandbox.View, error) {
	c, err := g.client()
	if err != nil {
		return nil, sandbox.View{}, err
	}
	v, err := resolve(ctx, c, arg)
	return c, v, err
}

func resolveAll(ctx context.Context, c *client.Client, args []string) ([]sandbox.View, error) {
	out := make([]sandbox.View, 0, len(args))
	for _, a := range args {
		v, err := resolve(ctx, c, a)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// label is how a sandbox is named in messages: its name and id, or its id.
func label(v sandbox.View) string {
	if v.Name != "" {
		return v.Name + " (" + v.ID + ")"
	}
	return v.ID
}

// completeSandboxes offers the caller's sandboxes (names, then ids) for
// shell completion; the first maxArgs arguments are sandboxes (0: all).
func (g *globals) completeSandboxes(maxArgs int) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if maxArgs > 0 && len(args) >= maxArgs {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := g.client()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		list, err := c.ListSandboxes(ctx, "", "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, v := range list {
			desc := string(v.Status)
			if v.Name != "" && strings.HasPrefix(v.Name, prefix) {
				out = append(out, v.Name+"\t"+v.ID+" "+desc)
			}
			if strings.HasPrefix(v.ID, prefix) {
				out = append(out, v.ID+"\t"+v.Name+" "+desc)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// sshKey and apiToken are the API's objects, as --json prints them.
type sshKey struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Fingerprint string     `json:"fingerprint"`
	Type        string     `json:"type"`
	CreatedAt   time.Time  `json:"createdAt"`
	ExpiresAt   *time.Time `json:"expiresAt"`
}

type apiToken struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Scope      string     `json:"scope"`
	CreatedAt  time.Time  `json:"createdAt"`
	LastUsedAt *time.Time `json:"lastUsedAt,omitempty"`
	ExpiresAt  *time.Time `json:"expiresAt,omitempty"`
	// Token is the secret: only in the answer that creates it.
	Token string `json:"token,omitempty"`
}

func when(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.Local().Format("2006-01-02 15:04")
}

// pick finds the items an argument names: an id, else a name. A name that
// several items share is an error listing their ids.
func pick[T any](arg, what string, items []T, id, name func(T) string) (T, error) {
	var zero T
	var byName []T
	for _, it := range items {
		if id(it) == arg {
			return it, nil
		}
		if name(it) == arg {
			byName = append(byName, it)
		}
	}
	switch len(byName) {
	case 0:
		return zero, fmt.Errorf("no %s %q: no id or name matches (atelier %s list shows yours)", what, arg, what)
	case 1:
		return byName[0], nil
	}
	var ids []string
	for _, it := range byName {
		ids = append(ids, id(it))
	}
	return zero, fmt.Errorf("the name %q is shared by %d of your %ss (%s); give an id", arg, len(byName), what, strings.Join(ids, ", "))
}

func newSSHKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ssh-key", Aliases: []string{"ssh-keys"}, Short: "Register, list and remove your SSH public keys"}

	var name, expires string
	add := &cobra.Command{
		Use:   "add [FILE|-]",
		Short: "Register an SSH public key (default ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub)",
		Long: "Register a public key (an authorized_keys line, e.g. ~/.ssh/id_ed25519.pub; - reads it from stdin).\n" +
			"It then opens ssh <sandbox-id>@<ssh host> -p <port> to your own sandboxes until it expires or is\n" +
			"removed. --json prints the API's key object.",
		Example: "  atelier ssh-key add\n  atelier ssh-key add ~/.ssh/work.pub --name work --expires 720h",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := ""
			if len(args) == 1 {
				file = args[0]
			}
			line, from, err := readPublicKey(file, stdinOf(cmd))
			if err != nil {
				return err
			}
			body := map[string]any{"publicKey": line}
			if name == "" {
				name = keyComment(line)
			}
			if name == "" {
				name = filepath.Base(from)
			}
			body["name"] = name
			if expires != "" {
				t, err := parseExpiry(expires)
				if err != nil {
					return fmt.Errorf("--expires %q: %w", expires, err)
				}
				body["expiresAt"] = t
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var k sshKey
			if err := c.Do(cmd.Context(), "POST", "/api/ssh-keys", body, &k); err != nil {
				return flagError(err, map[string]string{"name": "--name", "expiresAt": "--expires", "publicKey": "the key in " + from})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s %s (%s, id %s)\n", k.Type, k.Fingerprint, k.Name, k.ID)
			return nil
		},
	}
	add.Flags().StringVar(&name, "name", "", "what the key is (default its comment, e.g. user@laptop)")
	add.Flags().StringVar(&expires, "expires", "", "when it stops working: an RFC 3339 time or a duration like 720h")

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your SSH keys",
		Long:    "List your SSH keys. --json prints an array of the API's key objects.",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, err := g.sshKeys(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), keys)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTYPE\tFINGERPRINT\tCREATED\tEXPIRES")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Type, k.Fingerprint, when(&k.CreatedAt, ""), when(k.ExpiresAt, "never"))
			}
			return tw.Flush()
		},
	}

	rm := &cobra.Command{
		Use:   "rm ID|NAME...",
		Short: "Remove SSH keys (new connections with them are refused at once)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := g.sshKeys(cmd.Context())
			if err != nil {
				return err
			}
			var chosen []sshKey
			for _, a := range args {
				k, err := pick(a, "ssh-key", keys, func(k sshKey) string { return k.ID }, func(k sshKey) string { return k.Name })
				if err != nil {
					return err
				}
				chosen = append(chosen, k)
			}
			c, _ := g.client()
			for _, k := range chosen {
				if err := c.Do(cmd.Context(), "DELETE", "/api/ssh-keys/"+url.PathEscape(k.ID), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s)\n", k.Name, k.ID)
			}
			return nil
		},
	}
	cmd.AddCommand(add, list, rm)
	return cmd
}

func (g *globals) sshKeys(ctx context.Context) ([]sshKey, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	var out struct {
		Keys []sshKey `json:"keys"`
	}
	err = c.Do(ctx, "GET", "/api/ssh-keys", nil, &out)
	return out.Keys, err
}

// readPublicKey reads the key from file, stdin ("-") or the user's usual
// key files; a private key is refused before it leaves this machine.
func readPublicKey(file string, stdin io.Reader) (line, from string, err error) {
	var b []byte
	switch file {
	case "-":
		b, err = io.ReadAll(io.LimitReader(stdin, 16<<10))
		from = "stdin"
	case "":
		home, _ := os.UserHomeDir()
		for _, n := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
			p := filepath.Join(home, ".ssh", n)
			if b, err = os.ReadFile(p); err == nil {
				from = p
				break
			}
		}
		if from == "" {
			return "", "", errors.New("no public key in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): name the file, or make one with ssh-keygen -t ed25519")
		}
	default:
		b, err = os.ReadFile(file)
		from = file
	}
	if err != nil {
		return "", "", err
	}
	line = strings.TrimSpace(string(b))
	if strings.Contains(line, "PRIVATE KEY") {
		return "", "", fmt.Errorf("%s holds a private key: give the public one (the .pub file); the private key never leaves your machine", from)
	}
	return line, from, nil
}

func keyComment(line string) string {
	f := strings.Fields(line)
	if len(f) >= 3 {
		return strings.Join(f[2:], " ")
	}
	return ""
}

// parseExpiry reads an RFC 3339 time or a duration from now.
func parseExpiry(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, errors.New("expected an RFC 3339 time (2030-01-02T15:04:05Z) or a positive duration (720h)")
	}
	return time.Now().Add(d).UTC().Truncate(time.Second), nil
}

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Aliases: []string{"tokens"}, Short: "Create, list and revoke API tokens"}

	var scope string
	var ttl time.Duration
	var noExpiry bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an API token; its secret is printed once",
		Long: "Create an API token. Only the secret goes to stdout, so it can be captured:\n" +
			"  export ATELIER_TOKEN=$(atelier token create laptop)\n" +
			"It is shown this once: only its hash is kept. --json prints the API's token object, secret included.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": args[0]}
			if scope != "" {
				body["scope"] = scope
			}
			if ttl < 0 || ttl%time.Hour != 0 {
				return fmt.Errorf("--ttl %s: must be a whole number of hours, e.g. 720h", ttl)
			}
			if ttl > 0 {
				body["ttlHours"] = int(ttl.Hours())
			}
			if noExpiry {
				body["noExpiry"] = true
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var t apiToken
			if err := c.Do(cmd.Context(), "POST", "/api/tokens", body, &t); err != nil {
				return flagError(err, map[string]string{"scope": "--scope", "ttlHours": "--ttl", "noExpiry": "--no-expiry", "name": "NAME"})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "created token %s (%s, scope %s, expires %s); its secret, shown only now:\n",
				t.Name, t.ID, t.Scope, when(t.ExpiresAt, "never"))
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			return nil
		},
	}
	create.Flags().StringVar(&scope, "scope", "", "read (GET only, no WebSockets), full (default) or admin (admins only)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime in hours, e.g. 720h (default and most: auth.tokenTtlDays)")
	create.Flags().BoolVar(&noExpiry, "no-expiry", false, "never expires (only when auth.tokenNoExpiry is allow)")

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your API tokens (never their secrets)",
		Long:    "List your API tokens. --json prints an array of the API's token objects (without secrets).",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, err := g.tokens(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), ts)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tPREFIX\tSCOPE\tCREATED\tLAST USED\tEXPIRES")
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Prefix, t.Scope, when(&t.CreatedAt, ""), when(t.LastUsedAt, "never"), when(t.ExpiresAt, "never"))
			}
			return tw.Flush()
		},
	}

	rm := &cobra.Command{
		Use:     "rm ID|NAME...",
		Aliases: []string{"revoke"},
		Short:   "Revoke API tokens",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := g.tokens(cmd.Context())
			if err != nil {
				return err
			}
			var chosen []apiToken
			for _, a := range args {
				t, err := pick(a, "token", ts, func(t apiToken) string { return t.ID }, func(t apiToken) string { return t.Name })
				if err != nil {
					return err
				}
				chosen = append(chosen, t)
			}
			c, _ := g.client()
			for _, t := range chosen {
				if err := c.Do(cmd.Context(), "DELETE", "/api/tokens/"+url.PathEscape(t.ID), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (%s)\n", t.Name, t.ID)
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, rm)
	return cmd
}

func (g *globals) tokens(ctx context.Context) ([]apiToken, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	var out struct {
		Tokens []apiToken `json:"tokens"`
	}
	err = c.Do(ctx, "GET", "/api/tokens", nil, &out)
	return out.Tokens, err
}

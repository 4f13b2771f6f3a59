package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/auth/githubtest"
	"atelier/internal/config"
)

// TestWorkspaceCLI: create, list, get, update and rm by name, secrets from
// the environment and a file, never printed back; bad input names the flag
// and the key.
func TestWorkspaceCLI(t *testing.T) {
	url, _ := startMockServer(t)
	ctx := context.Background()
	run := func(args ...string) cliRun { t.Helper(); return cli(t, ctx, url, "", args...) }
	const secret = "cli-secret-4b1d-value"
	t.Setenv("WS_TEST_TOKEN", secret)
	keyFile := filepath.Join(t.TempDir(), "npmrc")
	if err := os.WriteFile(keyFile, []byte("//registry/:_authToken="+secret), 0o600); err != nil {
		t.Fatal(err)
	}

	run("workspace", "create", "web", "--repo", "https://git.example.test/acme/web.git#dev",
		"--init", "make setup", "--dev", "web:3000=npm run dev", "--env", "MODE=dev",
		"--secret-env", "WS_TEST_TOKEN", "--secret-file", "~/.npmrc="+keyFile).ok(t, "create")
	r := run("workspace", "list").ok(t, "list")
	if !strings.Contains(r.out, "web") || !strings.Contains(r.out, "https://git.example.test/acme/web.git#dev") {
		t.Fatalf("list: %s", r.out)
	}
	r = run("workspace", "get", "web").ok(t, "get by name")
	if strings.Contains(r.out, secret) {
		t.Fatalf("get printed a secret value: %s", r.out)
	}
	var w struct {
		ID        string
		SecretEnv []string
		Config    struct {
			DevCommands []struct {
				Name    string
				Port    int
				Default bool
			}
		}
	}
	if err := json.Unmarshal([]byte(r.out), &w); err != nil {
		t.Fatal(err)
	}
	if len(w.SecretEnv) != 1 || w.SecretEnv[0] != "WS_TEST_TOKEN" || len(w.Config.DevCommands) != 1 ||
		w.Config.DevCommands[0].Port != 3000 || !w.Config.DevCommands[0].Default {
		t.Fatalf("get: %s", r.out)
	}

	run("workspace", "create", "bad", "--repo", "ssh://git@host/x.git").fails(t, "bad repo", "--repo", "config.repos[0].url")
	run("workspace", "create", "bad", "--dev", "Web:3000=x").fails(t, "bad dev name", "--dev", "config.devCommands[0].name")
	run("workspace", "create", "bad", "--secret-env", "WS_UNSET_VARIABLE_X").fails(t, "unset secret", "--secret-env", "WS_UNSET_VARIABLE_X")

	run("workspace", "update", "web", "--name", "web2", "--delete-secret", "WS_TEST_TOKEN", "--init", "make").ok(t, "update")
	r = run("workspace", "get", w.ID).ok(t, "get by id")
	if !strings.Contains(r.out, `"web2"`) || strings.Contains(r.out, "WS_TEST_TOKEN") || !strings.Contains(r.out, "git.example.test") {
		t.Fatalf("after update: %s", r.out)
	}
	r = run("workspace", "prebuild", "web2", "--log").ok(t, "prebuild --log")
	if !strings.Contains(r.out, "prebuild of web2: none (ready: false") {
		t.Errorf("prebuild --log: %q", r.out)
	}
	r = cli(t, ctx, url, "tok-from-stdin-93\n", "git-source", "add", "local", "https://git.example.test").ok(t, "git-source add")
	if !strings.Contains(r.out, "added git source local for git.example.test") {
		t.Errorf("git-source add: %q", r.out)
	}
	r = run("git-source", "list").ok(t, "git-source list")
	if !strings.Contains(r.out, "git.example.test") || strings.Contains(r.out, "tok-from-stdin") {
		t.Errorf("git-source list: %q", r.out)
	}
	cli(t, ctx, url, "tok\n", "git-source", "add", "bad", "ssh://x").fails(t, "bad source url", "URL")
	run("git-source", "rm", "local").ok(t, "git-source rm")
	run("workspace", "rm", "web2").ok(t, "rm")
	run("workspace", "get", "web2").fails(t, "get removed", "no workspace")
}

// TestGitSourceGitHubCLI: repos and branches of a github source through
// the GitHub stand-in, every page; bad input names the argument.
func TestGitSourceGitHubCLI(t *testing.T) {
	gh := githubtest.New(t)
	gh.AddUser(7, "octo")
	gh.SetMaxPerPage(1)
	gh.AddRepo("octo/api", true, map[string]string{"main": "a1", "dev": "a2"})
	gh.AddRepo("octo/web", false, map[string]string{"main": "b1"})
	url, _ := startMockServerWith(t, func(c *config.Config) { c.Auth.GitHub.APIURL = gh.URL })
	ctx := context.Background()
	run := func(args ...string) cliRun { t.Helper(); return cli(t, ctx, url, "", args...) }
	tok := gh.IssueToken("octo", "repo")
	cli(t, ctx, url, tok+"\n", "git-source", "add", "gh", "--type", "github").ok(t, "add")

	r := run("git-source", "repos", "gh").ok(t, "repos")
	if !strings.Contains(r.out, "octo/api") || !strings.Contains(r.out, "octo/web") || !strings.Contains(r.out, "https://github.com/octo/api.git") {
		t.Errorf("repos: %q", r.out)
	}
	r = run("git-source", "branches", "gh", "octo/api").ok(t, "branches")
	if !strings.Contains(r.out, "dev") || !strings.Contains(r.out, "a2") || !strings.Contains(r.out, "main") {
		t.Errorf("branches: %q", r.out)
	}
	run("git-source", "branches", "gh", "octo/none").fails(t, "unknown repository", "not found")
	run("git-source", "branches", "gh", "../x").fails(t, "bad repository", "REPO")
	cli(t, ctx, url, "t\n", "git-source", "add", "gen", "https://git.example.test").ok(t, "add generic")
	run("git-source", "repos", "gen").fails(t, "generic repos", "ID|NAME")
	for _, secret := range []string{tok} {
		if r := run("git-source", "list"); strings.Contains(r.out, secret) {
			t.Errorf("list printed the token")
		}
	}
}

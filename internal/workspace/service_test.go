package workspace

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"atelier/internal/sandbox"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

func newService(t *testing.T) (*Service, *store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, u := range []string{"alice", "bob"} {
		if _, err := st.EnsureUser(context.Background(), store.User{ID: u, Login: u}); err != nil {
			t.Fatal(err)
		}
	}
	box, err := secretbox.LoadOrCreate(filepath.Join(dir, secretbox.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return New(st, box, nil), st, dir
}

const (
	envValue  = "s3cr3t-env-value-7f1c"
	fileValue = "-----BEGIN KEY----- s3cr3t-file-6a2b"
)

// TestSecretsSealedNamesOnly: secrets come back as names, open for
// provisioning, and the database file never holds them in the clear.
func TestSecretsSealedNamesOnly(t *testing.T) {
	ctx := context.Background()
	svc, st, dir := newService(t)
	w, err := svc.Create(ctx, "alice", "web", Config{
		Repos: []Repo{{URL: "https://git.example.test/acme/web.git"}},
		Env:   map[string]string{"NODE_ENV": "development"},
	}, map[string]string{"API_KEY": envValue}, []SecretFile{{Path: "~/.config/key.pem", Content: fileValue, Mode: "0400"}})
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.Repos[0].Branch != "main" || w.Config.Repos[0].Path != "web" {
		t.Fatalf("defaults not applied: %+v", w.Config.Repos[0])
	}
	if len(w.SecretEnv) != 1 || w.SecretEnv[0] != "API_KEY" || len(w.SecretFiles) != 1 ||
		w.SecretFiles[0] != (SecretFileInfo{Path: "~/.config/key.pem", Mode: "0400"}) {
		t.Fatalf("secret names = %v %v", w.SecretEnv, w.SecretFiles)
	}
	sec, err := svc.OpenSecrets(ctx, w.ID)
	if err != nil {
		t.Fatal(err)
	}
	if sec.Env["API_KEY"] != envValue || len(sec.Files) != 1 || string(sec.Files[0].Content) != fileValue || sec.Files[0].Mode != 0o400 {
		t.Fatalf("opened secrets = %+v", sec)
	}
	st.Close()
	// The whole database, WAL included, is grepped for the values.
	for _, f := range []string{store.DBFile, store.DBFile + "-wal"} {
		b, _ := readFile(filepath.Join(dir, f))
		if bytes.Contains(b, []byte(envValue)) || bytes.Contains(b, []byte("s3cr3t-file")) {
			t.Fatalf("%s holds a secret in the clear", f)
		}
	}
}

// TestSealedSecretBoundToRow: a sealed value copied onto another
// workspace's row does not open there.
func TestSealedSecretBoundToRow(t *testing.T) {
	ctx := context.Background()
	svc, st, dir := newService(t)
	a, err := svc.Create(ctx, "alice", "a", Config{}, map[string]string{"TOKEN": envValue}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.Create(ctx, "bob", "b", Config{}, map[string]string{"TOKEN": "bobs"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", filepath.Join(dir, store.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE workspace_secrets SET sealed = (SELECT sealed FROM workspace_secrets WHERE workspace_id = ?)
		WHERE workspace_id = ?`, a.ID, b.ID); err != nil {
		t.Fatal(err)
	}
	db.Close()
	st2, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	svc2 := New(st2, svc.box, nil)
	if _, err := svc2.OpenSecrets(ctx, b.ID); !errors.Is(err, secretbox.ErrOpen) {
		t.Fatalf("copied secret opened: %v", err)
	}
	if s, err := svc2.OpenSecrets(ctx, a.ID); err != nil || s.Env["TOKEN"] != envValue {
		t.Fatalf("own secret: %v %v", s, err)
	}
}

func TestUpdateSecretsAndConfig(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	w, err := svc.Create(ctx, "alice", "api", Config{}, map[string]string{"A": "1", "B": "2"}, []SecretFile{{Path: "/etc/app/key", Content: "k"}})
	if err != nil {
		t.Fatal(err)
	}
	name := "api2"
	w, err = svc.Update(ctx, w.ID, Change{Name: &name, Config: &Config{InitCommands: []string{"make"}},
		SecretEnv: map[string]string{"A": "one", "C": "3"}, DeleteSecrets: []string{"B", "/etc/app/key"}})
	if err != nil {
		t.Fatal(err)
	}
	if w.Name != "api2" || len(w.Config.InitCommands) != 1 || len(w.SecretFiles) != 0 || len(w.SecretEnv) != 2 {
		t.Fatalf("updated = %+v", w)
	}
	sec, _ := svc.OpenSecrets(ctx, w.ID)
	if sec.Env["A"] != "one" || sec.Env["C"] != "3" || len(sec.Env) != 2 {
		t.Fatalf("env = %v", sec.Env)
	}
	if _, err := svc.Create(ctx, "alice", "api2", Config{}, nil, nil); !errors.Is(err, store.ErrDuplicate) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := svc.Create(ctx, "bob", "api2", Config{}, nil, nil); err != nil {
		t.Fatalf("another owner's same name: %v", err)
	}
}

// TestValidationNamesField: every bad input is a FieldError naming the field.
func TestValidationNamesField(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	cases := []struct {
		field string
		cfg   Config
		env   map[string]string
		files []SecretFile
		name  string
	}{
		{field: "name", name: " "},
		{field: "config.repos[0].url", cfg: Config{Repos: []Repo{{URL: "ssh://git@host/x"}}}},
		{field: "config.repos[0].url", cfg: Config{Repos: []Repo{{URL: "https://user:tok@host/x.git"}}}},
		{field: "config.repos[0].branch", cfg: Config{Repos: []Repo{{URL: "https://h/x", Branch: "--upload-pack=x"}}}},
		{field: "config.repos[1].path", cfg: Config{Repos: []Repo{{URL: "https://h/x"}, {URL: "https://g/x"}}}},
		{field: "config.repos[0].path", cfg: Config{Repos: []Repo{{URL: "https://h/x", Path: "../etc"}}}},
		{field: "config.vcpus", cfg: Config{Vcpus: 99}},
		{field: "config.devCommands[0].name", cfg: Config{DevCommands: []DevCommand{{Name: "Web", Command: "x"}}}},
		{field: "config.devCommands[0].port", cfg: Config{DevCommands: []DevCommand{{Name: "web", Command: "x", Port: 80}}}},
		{field: "config.devCommands[1].default", cfg: Config{DevCommands: []DevCommand{{Name: "a", Command: "x", Port: 3000, Default: true}, {Name: "b", Command: "x", Port: 3001, Default: true}}}},
		{field: "config.devCommands[0].aliases[0].alias", cfg: Config{DevCommands: []DevCommand{{Name: "a", Command: "x", Port: 3000, Aliases: []DevAlias{{Alias: "A", Port: 3001}}}}}},
		{field: "config.initCommands[0]", cfg: Config{InitCommands: []string{" "}}},
		{field: "config.env.1X", cfg: Config{Env: map[string]string{"1X": "y"}}},
		{field: "secretEnv.BAD-NAME", env: map[string]string{"BAD-NAME": "v"}},
		{field: "secretFiles[0].path", files: []SecretFile{{Path: "relative/key"}}},
		{field: "secretFiles[0].path", files: []SecretFile{{Path: "/proc/self/x"}}},
		{field: "secretFiles[0].mode", files: []SecretFile{{Path: "/k", Mode: "999"}}},
	}
	for _, c := range cases {
		name := c.name
		if name == "" {
			name = "ws"
		}
		_, err := svc.Create(ctx, "alice", name, c.cfg, c.env, c.files)
		var fe *sandbox.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("want field %s, got %v", c.field, err)
		}
	}
	if list, _ := svc.List(ctx, ""); len(list) != 0 {
		t.Fatalf("invalid input stored %d workspaces", len(list))
	}
}

func TestDeleteRefusedWhileSandboxesRemain(t *testing.T) {
	ctx := context.Background()
	svc, st, _ := newService(t)
	w, err := svc.Create(ctx, "alice", "w", Config{}, map[string]string{"X": "y"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sb := store.Sandbox{ID: "sbxaaaaaaaaa", OwnerID: "alice", WorkspaceID: w.ID, Image: "dev-base", Status: store.StatusStopped,
		Vcpus: 1, MemoryMB: 512, CreatedAt: now, UpdatedAt: now}
	if err := st.InsertSandbox(ctx, sb, 0); err != nil {
		t.Fatal(err)
	}
	var inUse *store.InUseError
	if err := svc.Delete(ctx, w.ID); !errors.As(err, &inUse) || inUse.SandboxIDs[0] != sb.ID || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete with a sandbox: %v", err)
	}
	if err := st.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := svc.Delete(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Get(ctx, w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if secs, _ := st.WorkspaceSecrets(ctx, w.ID); len(secs) != 0 {
		t.Fatalf("secrets outlived their workspace: %d", len(secs))
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

// TestCredentialOnlyForItsServer: a source's token opens for its owner and
// its host and scheme only.
func TestCredentialOnlyForItsServer(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	src, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "git", URL: "https://git.example.test", Token: "tok-1"})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "lan", URL: "http://10.0.0.5:3000", Token: "tok-2"})
	if err != nil {
		t.Fatal(err)
	}
	if src.Host != "git.example.test" || plain.Host != "http://10.0.0.5:3000" {
		t.Fatalf("hosts: %q %q", src.Host, plain.Host)
	}
	key := func(raw string) string { u, _ := url.Parse(raw); return sourceKey(u) }
	if c, err := svc.Credential(ctx, "alice", src.ID, key("https://git.example.test/a/b.git")); err != nil || c.Token != "tok-1" || c.Username != "x-access-token" {
		t.Fatalf("own https: %+v %v", c, err)
	}
	if _, err := svc.Credential(ctx, "alice", src.ID, key("http://git.example.test/a/b.git")); !errors.Is(err, ErrSourceHost) {
		t.Fatalf("https token over http: %v", err)
	}
	if _, err := svc.Credential(ctx, "alice", src.ID, key("https://evil.test/a/b.git")); !errors.Is(err, ErrSourceHost) {
		t.Fatalf("another host: %v", err)
	}
	if _, err := svc.Credential(ctx, "bob", src.ID, key("https://git.example.test/a/b.git")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another user: %v", err)
	}
	if c, err := svc.Credential(ctx, "alice", plain.ID, key("http://10.0.0.5:3000/x.git")); err != nil || c.Token != "tok-2" {
		t.Fatalf("own http: %+v %v", c, err)
	}
	for _, bad := range []SourceInput{{Name: "x", URL: "ssh://h", Token: "t"}, {Name: "x", URL: "https://u:p@h", Token: "t"}} {
		var fe *sandbox.FieldError
		if _, err := svc.CreateSource(ctx, "alice", bad); !errors.As(err, &fe) || fe.Field != "url" {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if _, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "x", URL: "https://h", Token: ""}); err == nil {
		t.Error("empty token accepted")
	}
}

// TestCredentialForHost: a guest's request gets the owner's token only
// for exactly the source's scheme and host; another user gets nothing.
func TestCredentialForHost(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	if _, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "plain", URL: "http://git.local:8080", Token: "tok-http"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "tls", URL: "https://git.example.test", Token: "tok-https"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ owner, protocol, host, want string }{
		{"alice", "http", "git.local:8080", "tok-http"},
		{"alice", "https", "git.example.test", "tok-https"},
		{"alice", "https", "git.local:8080", ""},  // the http token never goes over another scheme
		{"alice", "http", "git.example.test", ""}, // nor the https one in the clear
		{"alice", "http", "git.local", ""},        // another port is another server
		{"alice", "https", "evil.example.test", ""},
		{"alice", "ssh", "git.example.test", ""},
		{"bob", "https", "git.example.test", ""}, // another user's sandbox
	} {
		c, err := svc.CredentialForHost(ctx, tc.owner, tc.protocol, tc.host)
		if c.Token != tc.want || (tc.want == "" && !errors.Is(err, ErrSourceHost)) {
			t.Errorf("%s %s://%s: %q, %v; want %q", tc.owner, tc.protocol, tc.host, c.Token, err, tc.want)
		}
	}
}

package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	// Never read a real /etc/atelier/sandbox.config.json from a test.
	dir, err := os.MkdirTemp("", "atelier-config-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		os.Exit(1)
	}
	defaultPath = filepath.Join(dir, "absent.json")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeFile(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sandbox.config.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadWith loads content as the config file ("" means no file) and env.
func loadWith(t testing.TB, content string, env ...string) (*Config, error) {
	t.Helper()
	opts := Options{Env: append([]string{}, env...)}
	if content == "" {
		opts.SkipFile = true
	} else {
		opts.File = writeFile(t, content)
	}
	return Load(opts)
}

func mustLoad(t testing.TB, content string, env ...string) *Config {
	t.Helper()
	c, err := loadWith(t, content, env...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func get(t testing.TB, c *Config, key string) any {
	t.Helper()
	l, ok := leafByKey(key)
	if !ok {
		t.Fatalf("no key %s", key)
	}
	return l.value(c).Interface()
}

// fileWith builds a config file setting one dotted key.
func fileWith(t testing.TB, key string, val any) string {
	t.Helper()
	parts := strings.Split(key, ".")
	var v any = val
	for i := len(parts) - 1; i >= 0; i-- {
		v = map[string]any{parts[i]: v}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind, key, env string
		def, fileVal   any
		envVal         string
		wantFile       any // when it differs from fileVal's decoded form
		wantEnv        any
	}{
		{kind: "string", key: "domain.baseDomain", env: "ATELIER_BASE_DOMAIN",
			def: "localhost", fileVal: "file.example.com", envVal: "env.example.com", wantEnv: "env.example.com"},
		{kind: "int", key: "server.port", env: "ATELIER_SERVER_PORT",
			def: 4000, fileVal: 5000, envVal: " 6000 ", wantEnv: 6000},
		{kind: "list", key: "network.dnsServers", env: "ATELIER_DNS_SERVERS",
			def: []string{"8.8.8.8", "8.8.4.4"}, fileVal: []string{"1.1.1.1"},
			envVal: " 9.9.9.9, ,149.112.112.112,", wantEnv: []string{"9.9.9.9", "149.112.112.112"}},
		{kind: "egress allow-list", key: "network.egressAllowCidrs", env: "ATELIER_EGRESS_ALLOW_CIDRS",
			def: []string{}, fileVal: []string{"10.20.0.0/16"}, envVal: "192.168.5.0/24, 10.1.2.3/32", wantEnv: []string{"192.168.5.0/24", "10.1.2.3/32"}},
		{kind: "list from empty default", key: "auth.allowedUsers", env: "ATELIER_AUTH_ALLOWED_USERS",
			def: []string{}, fileVal: []string{"alice"}, envVal: "bob,carol", wantEnv: []string{"bob", "carol"}},
		{kind: "nested string", key: "advanced.server.firecracker.kernelPath", env: "ATELIER_KERNEL_PATH",
			def: "/var/lib/sandbox/kernel/vmlinux", fileVal: "/file/vmlinux", envVal: "/env/vmlinux", wantEnv: "/env/vmlinux"},
		{kind: "nested int", key: "advanced.vm.vscode.port", env: "ATELIER_VSCODE_PORT",
			def: 8080, fileVal: 8081, envVal: "8082", wantEnv: 8082},
		{kind: "secret", key: "auth.jwtSecret", env: "ATELIER_JWT_SECRET",
			def: DefaultJWTSecret, fileVal: "file-secret", envVal: "env-secret", wantEnv: "env-secret"},
		{kind: "mode", key: "server.mode", env: "ATELIER_SERVER_MODE",
			def: Mode(""), fileVal: "mock", wantFile: ModeMock, envVal: "production", wantEnv: ModeProduction},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			t.Parallel()
			file := fileWith(t, tt.key, tt.fileVal)
			wantFile := tt.fileVal
			if tt.wantFile != nil {
				wantFile = tt.wantFile
			}
			cases := []struct {
				name, file string
				env        []string
				want       any
			}{
				{"default", "", nil, tt.def},
				{"file over default", file, nil, wantFile},
				{"env over default", "", []string{tt.env + "=" + tt.envVal}, tt.wantEnv},
				{"env over file", file, []string{tt.env + "=" + tt.envVal}, tt.wantEnv},
				{"empty env is unset", file, []string{tt.env + "="}, wantFile},
			}
			for _, c := range cases {
				got := get(t, mustLoad(t, c.file, c.env...), tt.key)
				if !reflect.DeepEqual(got, c.want) {
					t.Errorf("%s: %s = %#v, want %#v", c.name, tt.key, got, c.want)
				}
			}
		})
	}
}

func TestFileMergesPartialObjects(t *testing.T) {
	t.Parallel()
	got := mustLoad(t, `{"advanced": {"vm": {"vscode": {"port": 9000}}}, "network": {"dnsServers": ["1.1.1.1"]}}`)
	want := Default()
	want.Advanced.VM.VSCode.Port = 9000
	want.Network.DNSServers = []string{"1.1.1.1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("partial file did not merge over defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestLastDuplicateEnvWins(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, "", "ATELIER_SERVER_PORT=1234", "ATELIER_SERVER_PORT=4321", "NOT_A_PAIR")
	if c.Server.Port != 4321 {
		t.Errorf("server.port = %d, want 4321", c.Server.Port)
	}
}

func TestRegistryPortEnvPriority(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  []string
		want int
	}{
		{"file when no env", nil, 4999},
		{"primary", []string{"ATELIER_REGISTRY_PORT=5000"}, 5000},
		{"alias", []string{"ATELIER_VERDACCIO_PORT=5001"}, 5001},
		{"primary beats alias", []string{"ATELIER_VERDACCIO_PORT=5001", "ATELIER_REGISTRY_PORT=5000"}, 5000},
		{"empty primary falls back to alias", []string{"ATELIER_REGISTRY_PORT=", "ATELIER_VERDACCIO_PORT=5001"}, 5001},
	}
	for _, tt := range tests {
		c := mustLoad(t, `{"advanced": {"server": {"verdaccio": {"port": 4999}}}}`, tt.env...)
		if got := c.Advanced.Server.Verdaccio.Port; got != tt.want {
			t.Errorf("%s: verdaccio port = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestEnvIntegerErrorsNameVarAndKey(t *testing.T) {
	t.Parallel()
	var all []string
	for _, ev := range envTable {
		l, _ := leafByKey(ev.Key)
		if l.typ.Kind() != reflect.Int {
			continue
		}
		all = append(all, ev.Name+"=12x")
		t.Run(ev.Name, func(t *testing.T) {
			_, err := loadWith(t, "", ev.Name+"=12x")
			var ee *EnvError
			if !errors.As(err, &ee) {
				t.Fatalf("err = %v, want *EnvError", err)
			}
			if len(ee.Problems) != 1 || ee.Problems[0].Env != ev.Name || ee.Problems[0].Key != ev.Key {
				t.Fatalf("problems = %+v, want one naming %s and %s", ee.Problems, ev.Name, ev.Key)
			}
			msg := err.Error()
			for _, s := range []string{ev.Name, ev.Key, "12x"} {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not mention %s", msg, s)
				}
			}
		})
	}
	// All at once: every bad variable is reported, not just the first.
	_, err := loadWith(t, "", all...)
	var ee *EnvError
	if !errors.As(err, &ee) {
		t.Fatalf("err = %v, want *EnvError", err)
	}
	// The verdaccio alias is shadowed by the primary, so one fewer problem.
	if len(ee.Problems) != len(all)-1 {
		t.Errorf("got %d problems, want %d: %v", len(ee.Problems), len(all)-1, err)
	}
}

func TestFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content string
		// want lists key|line|column|message-fragment for each problem.
		want []FileProblem
	}{
		{"trailing comma", "{\n  \"server\": {\n    \"port\": 4000,\n  }\n}",
			[]FileProblem{{Line: 4, Column: 3, Message: "invalid JSON"}}},
		{"missing colon", "{\"server\" {}}",
			[]FileProblem{{Line: 1, Column: 11, Message: "invalid JSON"}}},
		{"trailing data", "{}\n{}",
			[]FileProblem{{Line: 2, Column: 1, Message: "invalid JSON"}}},
		{"truncated", "{\"server\": {",
			[]FileProblem{{Line: 1, Column: 12, Message: "invalid JSON"}}},
		{"empty", " \n", []FileProblem{{Line: 1, Column: 1, Message: "empty"}}},
		{"top-level list", "[]", []FileProblem{{Line: 1, Column: 1, Message: "JSON object, not a list"}}},
		{"top-level null", "null", []FileProblem{{Line: 1, Column: 1, Message: "JSON object, not null"}}},
		{"unknown top-level key", "{\"domian\": {}}",
			[]FileProblem{{Key: "domian", Line: 1, Column: 2, Message: `unknown key "domian"`}}},
		{"unknown nested key", "{\n  \"domain\": {\n    \"tls\": {\n      \"emial\": \"a@example.com\"\n    }\n  }\n}",
			[]FileProblem{{Key: "domain.tls.emial", Line: 4, Column: 7, Message: `unknown key "domain.tls.emial"`}}},
		{"unknown key with deep value", `{"server": {"extra": {"a": [[{"b": 1}]]}, "port": 1}}`,
			[]FileProblem{{Key: "server.extra", Line: 1, Column: 13, Message: "unknown key"}}},
		{"wrong letter case", `{"server": {"Port": 4000}}`,
			[]FileProblem{{Key: "server.Port", Line: 1, Column: 13, Message: "unknown key"}}},
		{"$schema only at the root", `{"server": {"$schema": "x"}}`,
			[]FileProblem{{Key: "server.$schema", Line: 1, Column: 13, Message: "unknown key"}}},
		{"string for integer", `{"server": {"port": "4000"}}`,
			[]FileProblem{{Key: "server.port", Line: 1, Column: 21, Message: `expected an integer, got the string "4000"`}}},
		{"fraction for integer", `{"server": {"port": 4000.5}}`,
			[]FileProblem{{Key: "server.port", Line: 1, Column: 21, Message: "expected an integer, got 4000.5"}}},
		{"overflowing integer", `{"server": {"port": 99999999999999999999}}`,
			[]FileProblem{{Key: "server.port", Line: 1, Column: 21, Message: "expected an integer"}}},
		{"number for string", `{"domain": {"baseDomain": 5}}`,
			[]FileProblem{{Key: "domain.baseDomain", Line: 1, Column: 27, Message: "expected a string, got the number 5"}}},
		{"null for string", `{"auth": {"allowedOrg": null}}`,
			[]FileProblem{{Key: "auth.allowedOrg", Line: 1, Column: 25, Message: "expected a string, got null"}}},
		{"string for list", `{"network": {"dnsServers": "1.1.1.1"}}`,
			[]FileProblem{{Key: "network.dnsServers", Line: 1, Column: 28, Message: "expected a list of strings"}}},
		{"bad list element", `{"network": {"dnsServers": ["1.1.1.1", 2]}}`,
			[]FileProblem{{Key: "network.dnsServers[1]", Line: 1, Column: 40, Message: "expected a string, got the number 2"}}},
		{"string for section", `{"domain": "example.com"}`,
			[]FileProblem{{Key: "domain", Line: 1, Column: 12, Message: "expected an object"}}},
		{"duplicate key", `{"server": {"port": 1, "port": 2}}`,
			[]FileProblem{{Key: "server.port", Line: 1, Column: 24, Message: "duplicate key"}}},
		{"several problems at once", "{\"server\": {\"prot\": 1, \"port\": true},\n \"sandbox\": {\"runtime\": []}}",
			[]FileProblem{
				{Key: "server.prot", Line: 1, Column: 13, Message: "unknown key"},
				{Key: "server.port", Line: 1, Column: 32, Message: "expected an integer, got true"},
				{Key: "sandbox.runtime", Line: 2, Column: 25, Message: "expected a string, got a list"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, tt.content)
			_, err := Load(Options{File: path, Env: []string{}})
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want *FileError", err)
			}
			if fe.Path != path || len(fe.Problems) != len(tt.want) {
				t.Fatalf("got %v, want %d problems in %s", err, len(tt.want), path)
			}
			for i, w := range tt.want {
				p := fe.Problems[i]
				if p.Key != w.Key || p.Line != w.Line || p.Column != w.Column || !strings.Contains(p.Message, w.Message) {
					t.Errorf("problem %d = %+v, want %+v", i, p, w)
				}
				if w.Key != "" && !strings.Contains(err.Error(), w.Key) {
					t.Errorf("error %q does not name %s", err, w.Key)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestSchemaKeyAllowedAtRoot(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, `{"$schema": "./atelier.schema.json", "server": {"mode": "mock"}}`)
	if c.Server.Mode != ModeMock {
		t.Errorf("mode = %q, want mock", c.Server.Mode)
	}
}

func TestFileSelection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	a := writeFile(t, `{"server": {"port": 1111}}`)
	b := writeFile(t, `{"server": {"port": 2222}}`)

	tests := []struct {
		name     string
		opts     Options
		wantPort int
		wantErr  string // fragment; "" means success
	}{
		{"default path missing is fine", Options{Env: []string{}}, 4000, ""},
		{"explicit file", Options{File: a, Env: []string{}}, 1111, ""},
		{"ATELIER_CONFIG", Options{Env: []string{"ATELIER_CONFIG=" + b}}, 2222, ""},
		{"explicit file beats ATELIER_CONFIG", Options{File: a, Env: []string{"ATELIER_CONFIG=" + b}}, 1111, ""},
		{"explicit missing file", Options{File: missing, Env: []string{}}, 0, missing},
		{"ATELIER_CONFIG missing file", Options{Env: []string{"ATELIER_CONFIG=" + missing}}, 0, "ATELIER_CONFIG"},
		{"SkipFile ignores ATELIER_CONFIG", Options{SkipFile: true, Env: []string{"ATELIER_CONFIG=" + missing}}, 4000, ""},
	}
	for _, tt := range tests {
		c, err := Load(tt.opts)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: err = %v, want a not-exist error mentioning %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if c.Server.Port != tt.wantPort {
			t.Errorf("%s: port = %d, want %d", tt.name, c.Server.Port, tt.wantPort)
		}
	}
}

// Not parallel: it swaps the default path and the process environment.
func TestDefaultPathAndProcessEnv(t *testing.T) {
	old := defaultPath
	defaultPath = writeFile(t, `{"server": {"port": 3333, "host": "127.0.0.1"}}`)
	t.Cleanup(func() { defaultPath = old })
	t.Setenv("ATELIER_CONFIG", "")
	t.Setenv("ATELIER_SERVER_PORT", "4321")

	c, err := Load(Options{}) // nil Env means os.Environ()
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Port != 4321 || c.Server.Host != "127.0.0.1" {
		t.Errorf("got %s, want the default file's host and the process env's port", c.ManagerAddr())
	}
}

func TestDerivation(t *testing.T) {
	t.Parallel()
	t.Run("defaults", func(t *testing.T) {
		c := Default()
		got := []string{c.Domain.Dashboard, c.Domain.SSH.Hostname, c.Server.SocketPath,
			c.Network.GuestSubnet, c.Network.BridgeCIDR, c.Network.BridgeNetmask, string(c.Server.Mode),
			c.Advanced.Server.Verdaccio.Dir}
		want := []string{"sandbox.localhost", "ssh.localhost", "/var/lib/atelier/atelier.sock",
			"172.16.0", "172.16.0.0/24", "255.255.255.0", "", "/var/lib/atelier-registry"}
		if !slices.Equal(got, want) {
			t.Errorf("derived %q, want %q", got, want)
		}
	})
	t.Run("base domain and data dir from env", func(t *testing.T) {
		c := mustLoad(t, "", "ATELIER_BASE_DOMAIN=example.com", "ATELIER_DATA_DIR=/srv/atelier/")
		got := []string{c.Domain.Dashboard, c.Domain.SSH.Hostname, c.Server.SocketPath, c.Advanced.Server.Verdaccio.Dir}
		want := []string{"sandbox.example.com", "ssh.example.com", "/srv/atelier/atelier.sock", "/srv/atelier-registry"}
		if !slices.Equal(got, want) {
			t.Errorf("derived %q, want %q", got, want)
		}
	})
	t.Run("stated values are kept", func(t *testing.T) {
		c := mustLoad(t, `{"domain": {"dashboard": "app.example.org", "ssh": {"hostname": "git.example.org"}}, "server": {"socketPath": "/run/atelier.sock"}}`,
			"ATELIER_BASE_DOMAIN=example.com")
		got := []string{c.Domain.Dashboard, c.Domain.SSH.Hostname, c.Server.SocketPath}
		want := []string{"app.example.org", "git.example.org", "/run/atelier.sock"}
		if !slices.Equal(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}

func TestNetworkDerivation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ip, prefix, start                   string
		subnet, cidr, mask, gw, first, last string
	}{
		{"10.20.30.1", "24", "10", "10.20.30", "10.20.30.0/24", "255.255.255.0", "10.20.30.1", "10.20.30.10", "10.20.30.254"},
		{"10.20.0.1", "16", "10", "10.20.0.0", "10.20.0.0/16", "255.255.0.0", "10.20.0.1", "10.20.0.10", "10.20.255.254"},
		{"192.168.5.17", "28", "2", "192.168.5.16", "192.168.5.16/28", "255.255.255.240", "192.168.5.17", "192.168.5.18", "192.168.5.30"},
		{"10.1.2.3", "22", "600", "10.1.0.0", "10.1.0.0/22", "255.255.252.0", "10.1.2.3", "10.1.2.88", "10.1.3.254"},
	}
	for _, tt := range tests {
		t.Run(tt.ip+"/"+tt.prefix, func(t *testing.T) {
			t.Parallel()
			c := mustLoad(t, "", "ATELIER_BRIDGE_IP="+tt.ip, "ATELIER_BRIDGE_PREFIX="+tt.prefix,
				"ATELIER_GUEST_IP_START="+tt.start, "ATELIER_SERVER_MODE=mock")
			n := c.Network
			if n.GuestSubnet != tt.subnet || n.BridgeCIDR != tt.cidr || n.BridgeNetmask != tt.mask {
				t.Errorf("derived %q %q %q, want %q %q %q", n.GuestSubnet, n.BridgeCIDR, n.BridgeNetmask, tt.subnet, tt.cidr, tt.mask)
			}
			gw, first, last, err := c.GuestRange()
			if err != nil {
				t.Fatal(err)
			}
			if gw.String() != tt.gw || first.String() != tt.first || last.String() != tt.last {
				t.Errorf("GuestRange = %s %s %s, want %s %s %s", gw, first, last, tt.gw, tt.first, tt.last)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestStatedDerivedNetworkFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file string
		env        []string
		wantKeys   []string
	}{
		{"matching values are accepted",
			`{"server": {"mode": "mock"}, "network": {"guestSubnet": "172.16.0", "bridgeCidr": "172.16.0.0/24", "bridgeNetmask": "255.255.255.0"}}`,
			nil, nil},
		{"a different value is refused",
			`{"server": {"mode": "mock"}, "network": {"guestSubnet": "172.16.1", "bridgeNetmask": "24"}}`,
			nil, []string{"network.guestSubnet", "network.bridgeNetmask"}},
		{"stale after the bridge moved",
			`{"server": {"mode": "mock"}, "network": {"guestSubnet": "172.16.0", "bridgeCidr": "172.16.0.0/24"}}`,
			[]string{"ATELIER_BRIDGE_IP=10.20.30.1"}, []string{"network.guestSubnet", "network.bridgeCidr"}},
	}
	for _, tt := range tests {
		c := mustLoad(t, tt.file, tt.env...)
		err := c.Validate()
		if got := problemKeys(err); !slices.Equal(got, tt.wantKeys) {
			t.Errorf("%s: problems %q, want %q (%v)", tt.name, got, tt.wantKeys, err)
		}
	}
}

func problemKeys(err error) []string {
	var ve *ValidationError
	if !errors.As(err, &ve) {
		return nil
	}
	var keys []string
	for _, p := range ve.Problems {
		keys = append(keys, p.Key)
	}
	return keys
}

func TestQuotasFromEnvAndFile(t *testing.T) {
	c := Default()
	if c.Quotas.RunningPerUser == 0 || c.Quotas.SandboxesPerUser == 0 || c.Quotas.DiskGBPerUser == 0 {
		t.Fatalf("default quotas %+v: unlimited must be the operator's explicit choice", c.Quotas)
	}
	if c.Quotas.RunningPerUser*2 > c.Server.MaxSandboxes {
		t.Errorf("default running quota %d lets two users fill server.maxSandboxes %d", c.Quotas.RunningPerUser, c.Server.MaxSandboxes)
	}
	path := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(path, []byte(`{"quotas": {"runningPerUser": 0, "diskGbPerUser": 7}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Options{File: path, Env: []string{"ATELIER_QUOTA_SANDBOXES_PER_USER=3", "ATELIER_QUOTA_DISK_GB_PER_USER=9"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Quotas{RunningPerUser: 0, SandboxesPerUser: 3, DiskGBPerUser: 9}); c.Quotas != want {
		t.Fatalf("quotas = %+v, want %+v", c.Quotas, want)
	}
}

// TestRetiredKeysAreRefused: keys that were accepted and never read are
// refused with the reason, from a file and from the environment, instead
// of being taken and silently ignored.
func TestRetiredKeysAreRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.json")
	body := `{"sandbox": {"imagesDirectory": "/opt/atelier/infra/images"}, "setup": {"network": {"onExists": "recreate"}},
		"advanced": {"vm": {"terminal": {"port": 7681}}, "server": {"sshProxy": {"version": "1.5.2"}}}}`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(Options{File: path, Env: []string{}})
	var fe *FileError
	want := []string{"sandbox.imagesDirectory", "setup.network", "advanced.vm.terminal", "advanced.server.sshProxy"}
	if !errors.As(err, &fe) || len(fe.Problems) != len(want) {
		t.Fatalf("err = %v, want every retired key refused", err)
	}
	for i, key := range want {
		p := fe.Problems[i]
		if p.Key != key || !strings.HasPrefix(p.Message, "retired: ") || !strings.Contains(p.Message, "never read") {
			t.Errorf("problem %d = %+v, want %s retired with the reason", i, p, key)
		}
	}
	for _, env := range []string{"ATELIER_TERMINAL_PORT=7681", "ATELIER_VERSION_SSH_PROXY=1.5.2"} {
		name, _, _ := strings.Cut(env, "=")
		_, err = Load(Options{SkipFile: true, Env: []string{env}})
		var ee *EnvError
		if !errors.As(err, &ee) || len(ee.Problems) != 1 || ee.Problems[0].Env != name ||
			!strings.HasPrefix(ee.Problems[0].Message, "retired: ") || !strings.Contains(ee.Problems[0].Message, "unset "+name) {
			t.Errorf("env %s: %v, want it refused as retired", name, err)
		}
	}
	_, err = Load(Options{SkipFile: true, Env: []string{"ATELIER_IMAGES_DIR=/x"}})
	var ee *EnvError
	if !errors.As(err, &ee) || len(ee.Problems) != 1 || ee.Problems[0].Env != "ATELIER_IMAGES_DIR" ||
		!strings.Contains(ee.Problems[0].Message, "unset ATELIER_IMAGES_DIR") {
		t.Fatalf("env: %v, want ATELIER_IMAGES_DIR refused", err)
	}
	for _, e := range EnvVars() {
		if _, retired := retiredEnv[e.Name]; retired {
			t.Errorf("%s is both read and retired", e.Name)
		}
	}
	for key := range retiredKeys {
		if _, ok := leafByKey(key); ok {
			t.Errorf("%s is both a key and retired", key)
		}
	}
}

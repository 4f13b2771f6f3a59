package guest

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

func TestHealthAndConfig(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	h, err := a.c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != "healthy" || h.SandboxID != "sbx123" || h.Protocol != agent.ProtocolVersion || h.Version == "" || h.UptimeSeconds <= 0 {
		t.Fatalf("health %+v", h)
	}

	_, err = a.c.GetConfig(ctx)
	if !agent.IsNotFound(err) {
		t.Fatalf("config before put: %v", err)
	}
	cfg := map[string]any{"sandboxId": "fromcfg", "services": map[string]any{"vscode": map[string]any{"port": 8080.0}}}
	ack, err := a.c.PutConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Path != filepath.Join(a.dir, "etc", "config.json") {
		t.Fatalf("ack %+v", ack)
	}
	raw, err := a.c.GetConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil || !reflect.DeepEqual(got, cfg) {
		t.Fatalf("config round trip %s %v", raw, err)
	}
	if fi, err := os.Stat(ack.Path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file %v %v", fi, err)
	}
	if h, _ = a.c.Health(ctx); h.SandboxID != "fromcfg" {
		t.Fatalf("health after config %+v", h)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://agent/config", strings.NewReader("{not json"))
	resp, err := a.c.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("invalid config answered %d", resp.StatusCode)
	}

	// A new agent on the same config file reports the stored id at once.
	srv := NewServer(Options{ConfigPath: ack.Path, SandboxID: "flag", FileRoots: []string{a.root}})
	defer srv.Shutdown(ctx)
	if srv.sandboxID() != "fromcfg" {
		t.Fatalf("restarted agent reports %q", srv.sandboxID())
	}
}

func TestMetrics(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	for range 2 { // first call samples a window, second uses the previous call
		m, err := a.c.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.CPUPercent < 0 || m.CPUPercent > 100 || m.Memory.Total == 0 || m.Memory.Used > m.Memory.Total ||
			m.Disk.Total == 0 || m.Processes < 2 || m.Timestamp.IsZero() {
			t.Fatalf("metrics %+v", m)
		}
	}
}

func TestNetworkRecordedWhenUnmanaged(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	if _, err := a.c.Network(ctx); !agent.IsNotFound(err) {
		t.Fatalf("network before configure: %v", err)
	}
	cfg := agent.NetworkConfig{IP: "172.16.0.10", PrefixLen: 24, Gateway: "172.16.0.1", DNS: []string{"1.1.1.1"}, Hostname: "sandbox-abc"}
	res, err := a.c.ConfigureNetwork(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied || !reflect.DeepEqual(res.Config, cfg) {
		t.Fatalf("result %+v", res)
	}
	if got, err := a.c.Network(ctx); err != nil || !reflect.DeepEqual(*got, cfg) {
		t.Fatalf("recorded network %+v %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(a.dir, "etc", "resolv.conf")); !os.IsNotExist(err) {
		t.Fatal("unmanaged network wrote resolv.conf")
	}
	bad := []struct {
		cfg   agent.NetworkConfig
		field string
	}{
		{agent.NetworkConfig{IP: "300.1.1.1", PrefixLen: 24}, "ip"},
		{agent.NetworkConfig{IP: "10.0.0.2", PrefixLen: 33}, "prefixLen"},
		{agent.NetworkConfig{IP: "10.0.0.2", PrefixLen: 24, Gateway: "x"}, "gateway"},
		{agent.NetworkConfig{IP: "10.0.0.2", PrefixLen: 24, DNS: []string{"dns.example"}}, "dns"},
		{agent.NetworkConfig{IP: "10.0.0.2", PrefixLen: 24, Hostname: "bad_host!"}, "hostname"},
		{agent.NetworkConfig{IP: "10.0.0.2", PrefixLen: 24, MAC: "zz"}, "mac"},
	}
	for _, b := range bad {
		_, err := a.c.ConfigureNetwork(ctx, b.cfg)
		wantAgentError(t, err, 400, agent.CodeBadRequest, b.field)
	}
}

func TestNetworkFilesAndCommands(t *testing.T) {
	etc := t.TempDir()
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte("127.0.0.1\tlocalhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := agent.NetworkConfig{IP: "172.16.0.10", PrefixLen: 24, Gateway: "172.16.0.1", DNS: []string{"1.1.1.1", "8.8.8.8"}, Hostname: "sandbox-abc"}
	for range 2 { // idempotent
		if err := writeNetworkFiles(cfg, etc); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(etc, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("resolv.conf"); got != "nameserver 1.1.1.1\nnameserver 8.8.8.8\n" {
		t.Fatalf("resolv.conf %q", got)
	}
	if got := read("hostname"); got != "sandbox-abc\n" {
		t.Fatalf("hostname %q", got)
	}
	if got := read("hosts"); got != "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox-abc\n" {
		t.Fatalf("hosts %q", got)
	}

	cmds := networkCommands(cfg, "eth0")
	want := [][]string{
		{"ip", "link", "set", "dev", "lo", "up"},
		{"ip", "link", "set", "dev", "eth0", "up"},
		{"ip", "addr", "replace", "172.16.0.10/24", "dev", "eth0"},
		{"ip", "route", "replace", "default", "via", "172.16.0.1", "dev", "eth0"},
	}
	if !reflect.DeepEqual(cmds, want) {
		t.Fatalf("commands %v", cmds)
	}
}

func TestEmptyDirGuardsScratchMounts(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	if err := os.MkdirAll(filepath.Join(full, "atelier"), 0o755); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want bool
	}{{full, false}, {empty, true}, {filepath.Join(dir, "missing"), true}} {
		if got := emptyDir(tt.path); got != tt.want {
			t.Errorf("emptyDir(%s) = %v, want %v", tt.path, got, tt.want)
		}
	}
	if !isMountpoint("/") || isMountpoint(empty) {
		t.Error("isMountpoint misjudges / or a plain directory")
	}
}

// TestConfigEnv: the stored config's env reaches every process the agent
// starts, under the request's own variables, and survives an agent restart
// (it is read back from the stored config).
func TestConfigEnv(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	run := func(env map[string]string) string {
		t.Helper()
		res, err := a.c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", `printf '%s|%s' "$WS_A" "$WS_B"`}, Env: env})
		if err != nil {
			t.Fatal(err)
		}
		return res.Stdout
	}
	if got := run(nil); got != "|" {
		t.Fatalf("before any config: %q", got)
	}
	if _, err := a.c.PutConfig(ctx, map[string]any{"sandboxId": "s", "env": map[string]string{"WS_A": "from-config", "WS_B": "b $(x) `y`"}}); err != nil {
		t.Fatal(err)
	}
	if got := run(nil); got != "from-config|b $(x) `y`" {
		t.Fatalf("with config env: %q", got)
	}
	if got := run(map[string]string{"WS_A": "from-request"}); got != "from-request|b $(x) `y`" {
		t.Fatalf("request over config: %q", got)
	}
	// A new agent on the same config file.
	b := NewServer(Options{SandboxID: "x", ConfigPath: filepath.Join(a.dir, "etc", "config.json")})
	if got := b.configEnv(nil)["WS_A"]; got != "from-config" {
		t.Fatalf("after restart: %q", got)
	}
}

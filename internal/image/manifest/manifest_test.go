package manifest

import (
	"strings"
	"testing"

	"atelier/internal/agent"
)

func valid() Manifest {
	return Manifest{
		Schema: Schema, ID: "dev-base", User: "dev", Workdir: "/home/dev/workspace",
		Versions: map[string]string{"node": "24.11.0"},
		Services: []Service{
			{Name: "vscode", Role: RoleVSCode, Autostart: true, Process: agent.ProcessSpec{Argv: []string{"code-server"}, Port: 8080, Restart: agent.RestartAlways}, Health: &Health{Path: "/healthz"}},
			{Name: "browser", Role: RoleBrowser, Process: agent.ProcessSpec{Shell: "start-browser", Port: 6080}, Health: &Health{}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	m := valid()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Services[0].Name != "browser" || got.User != "dev" {
		t.Fatalf("round trip: %+v", got)
	}
	if s, ok := got.ServiceByRole(RoleVSCode); !ok || s.Process.Port != 8080 {
		t.Fatalf("vscode service: %+v %v", s, ok)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Manifest)
		field string
	}{
		{"schema", func(m *Manifest) { m.Schema = 2 }, "schema"},
		{"id", func(m *Manifest) { m.ID = "Dev Base" }, "id"},
		{"user", func(m *Manifest) { m.User = "root user" }, "user"},
		{"workdir relative", func(m *Manifest) { m.Workdir = "home/dev" }, "workdir"},
		{"workdir unclean", func(m *Manifest) { m.Workdir = "/home/../etc" }, "workdir"},
		{"service name", func(m *Manifest) { m.Services[0].Name = "VS" }, "services[0].name"},
		{"duplicate name", func(m *Manifest) { m.Services[1].Name = "vscode" }, "services[1].name"},
		{"unknown role", func(m *Manifest) { m.Services[0].Role = "db" }, "services[0].role"},
		{"role twice", func(m *Manifest) { m.Services[1].Role = RoleVSCode }, "services[1].role"},
		{"no command", func(m *Manifest) { m.Services[0].Process.Argv = nil }, "services[0].process"},
		{"health path", func(m *Manifest) { m.Services[0].Health.Path = "healthz" }, "services[0].health.path"},
		{"tcp check without port", func(m *Manifest) { m.Services[1].Process.Port = 0 }, "services[1].health"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := valid()
			tt.edit(&m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("error %v, want one naming %s", err, tt.field)
			}
		})
	}
}

func TestParseRefusesUnknownFields(t *testing.T) {
	if _, err := Parse([]byte(`{"schema":1,"id":"x","user":"dev","workdir":"/w","servces":[]}`)); err == nil {
		t.Fatal("a misspelt key was accepted")
	}
}

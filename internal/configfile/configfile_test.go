package configfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetKeepsOtherKeysAndOrder(t *testing.T) {
	in := []byte(`{"server": {"mode": "mock", "port": 4000}, "zeta": 1, "domain": {"baseDomain": "a.test"}}`)
	out, err := Set(in, "server.port", 4100)
	if err != nil {
		t.Fatal(err)
	}
	out, err = Set(out, "domain.tls.email", "ops@a.test")
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "server": {
    "mode": "mock",
    "port": 4100
  },
  "zeta": 1,
  "domain": {
    "baseDomain": "a.test",
    "tls": {
      "email": "ops@a.test"
    }
  }
}
`
	if string(out) != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestParseValue(t *testing.T) {
	for _, tc := range []struct {
		key, raw string
		want     string
		err      string
	}{
		{"server.port", "4100", "4100", ""},
		{"server.port", "x", "", "not an integer"},
		{"server.allowRemoteMock", "true", "true", ""},
		{"auth.allowedUsers", "alice, bob", "[alice bob]", ""},
		{"auth.allowedUsers", `["carol"]`, "[carol]", ""},
		{"network.guestSubnet", "10.0.0", "", "derived"},
		{"nope.key", "1", "", "unknown key"},
	} {
		v, err := ParseValue(tc.key, tc.raw)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s=%s: err %v, want %q", tc.key, tc.raw, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s=%s: %v", tc.key, tc.raw, err)
			continue
		}
		if got := strings.TrimSpace(strings.ReplaceAll(fmtV(v), "\n", "")); got != tc.want {
			t.Errorf("%s=%s: %s, want %s", tc.key, tc.raw, got, tc.want)
		}
	}
}

func fmtV(v any) string {
	if x, ok := v.([]string); ok {
		return "[" + strings.Join(x, " ") + "]"
	}
	return fmt.Sprint(v)
}

// TestApplyValidates: an invalid value never reaches the file, and the
// error names the key and its environment variable.
func TestApplyValidates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sandbox.config.json")
	env := []string{}
	changed, err := Apply(path, env, Change{"server.mode", "mock"})
	if err != nil || !changed {
		t.Fatalf("create: %v %v", changed, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("new config mode %v", fi.Mode())
	}
	before, _ := os.ReadFile(path)
	_, err = Apply(path, env, Change{"server.port", 0})
	if err == nil || !strings.Contains(err.Error(), "server.port") || !strings.Contains(err.Error(), "ATELIER_SERVER_PORT") {
		t.Fatalf("invalid port: %v", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("an invalid change was written")
	}
	changed, err = Apply(path, env, Change{"server.mode", "mock"})
	if err != nil || changed {
		t.Fatalf("same value: changed %v, %v", changed, err)
	}
	if !RestartNeeded("server.port") || RestartNeeded("setup.storage.method") {
		t.Fatal("RestartNeeded")
	}
}

package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("schema is not valid JSON:\n%s", b)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// schemaAt returns the sub-schema of a dotted key.
func schemaAt(s map[string]any, key string) (map[string]any, bool) {
	for part := range strings.SplitSeq(key, ".") {
		props, _ := s["properties"].(map[string]any)
		next, ok := props[part].(map[string]any)
		if !ok {
			return nil, false
		}
		s = next
	}
	return s, true
}

func TestSchemaDescribesEveryKey(t *testing.T) {
	t.Parallel()
	s := loadSchema(t)
	if s["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v", s["$schema"])
	}
	for _, l := range leaves() {
		sub, ok := schemaAt(s, l.key)
		if !ok {
			t.Errorf("schema lacks %s", l.key)
			continue
		}
		if sub["type"] == nil || sub["description"] == "" || sub["description"] == nil {
			t.Errorf("%s lacks a type or description: %v", l.key, sub)
		}
		_, hasDefault := sub["default"]
		if hasDefault == (l.key == "server.mode") {
			t.Errorf("%s: default present = %v; only server.mode has none", l.key, hasDefault)
		}
		if isPortKey(l.key) && (sub["minimum"] != 1.0 || sub["maximum"] != 65535.0) {
			t.Errorf("%s lacks the port range: %v", l.key, sub)
		}
	}
	if sub, _ := schemaAt(s, "server.mode"); !reflect.DeepEqual(sub["enum"], []any{"production", "mock"}) {
		t.Errorf("server.mode enum = %v", sub["enum"])
	}
	if sub, _ := schemaAt(s, "server.maxSandboxes"); sub["minimum"] != 1.0 || sub["maximum"] != 1000.0 {
		t.Errorf("server.maxSandboxes range = %v..%v", sub["minimum"], sub["maximum"])
	}
}

func TestSchemaListsEveryEnvVar(t *testing.T) {
	t.Parallel()
	s := loadSchema(t)
	for _, e := range EnvVars() {
		sub, ok := schemaAt(s, e.Key)
		if !ok {
			t.Errorf("%s: schema lacks %s", e.Name, e.Key)
			continue
		}
		desc, _ := sub["description"].(string)
		if !strings.Contains(desc, e.Name) {
			t.Errorf("%s description %q does not mention %s", e.Key, desc, e.Name)
		}
	}
	if desc, _ := s["description"].(string); !strings.Contains(desc, EnvConfigFile) {
		t.Errorf("root description %q does not mention %s", desc, EnvConfigFile)
	}
}

func TestSchemaClosesEveryObject(t *testing.T) {
	t.Parallel()
	var walk func(path string, s map[string]any)
	objects := 0
	walk = func(path string, s map[string]any) {
		if s["type"] != "object" {
			return
		}
		objects++
		if s["additionalProperties"] != false {
			t.Errorf("object %q allows additional properties", path)
		}
		for name, sub := range s["properties"].(map[string]any) {
			walk(joinKey(path, name), sub.(map[string]any))
		}
	}
	walk("", loadSchema(t))
	if objects < 20 {
		t.Errorf("walked only %d objects", objects)
	}
}

// The schema's defaults rebuild exactly the built-in defaults.
func TestSchemaDefaultsMatchDefaults(t *testing.T) {
	t.Parallel()
	var build func(s map[string]any) any
	build = func(s map[string]any) any {
		if s["type"] != "object" {
			return s["default"]
		}
		out := map[string]any{}
		for name, sub := range s["properties"].(map[string]any) {
			if v := build(sub.(map[string]any)); v != nil && name != "$schema" {
				out[name] = v
			}
		}
		return out
	}
	b, err := json.Marshal(build(loadSchema(t)))
	if err != nil {
		t.Fatal(err)
	}
	var got Config
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := defaults(); !reflect.DeepEqual(&got, want) {
		t.Errorf("schema defaults\n%+v\ndiffer from\n%+v", got, *want)
	}
}

// checkSchema is a small validator for the keywords Schema emits.
func checkSchema(path string, s map[string]any, v any) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, args...)) }
	switch s["type"] {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			bad("not an object")
			return errs
		}
		props := s["properties"].(map[string]any)
		for k, sub := range obj {
			ps, ok := props[k].(map[string]any)
			if !ok {
				bad("unknown key %s", k)
				continue
			}
			errs = append(errs, checkSchema(joinKey(path, k), ps, sub)...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("not a string")
		} else if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, any(str)) {
			bad("%q not in %v", str, enum)
		}
	case "integer":
		n, ok := v.(float64)
		if !ok || n != float64(int64(n)) {
			bad("not an integer")
			break
		}
		if lo, ok := s["minimum"].(float64); ok && n < lo {
			bad("%v below %v", n, lo)
		}
		if hi, ok := s["maximum"].(float64); ok && n > hi {
			bad("%v above %v", n, hi)
		}
	case "array":
		list, ok := v.([]any)
		if !ok {
			bad("not an array")
			break
		}
		if mi, ok := s["minItems"].(float64); ok && float64(len(list)) < mi {
			bad("fewer than %v items", mi)
		}
		for i, item := range list {
			errs = append(errs, checkSchema(fmt.Sprintf("%s[%d]", path, i), s["items"].(map[string]any), item)...)
		}
	}
	return errs
}

func TestFullExampleConformsToSchema(t *testing.T) {
	t.Parallel()
	s := loadSchema(t)
	ex, err := FullExample()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(ex, &doc); err != nil {
		t.Fatal(err)
	}
	if errs := checkSchema("", s, doc); len(errs) > 0 {
		t.Errorf("full example violates the schema:\n%s", strings.Join(errs, "\n"))
	}

	// The checker itself must catch what the loader and Validate refuse.
	bad := map[string]any{
		"server":  map[string]any{"mode": "staging", "port": 0, "extra": 1},
		"network": map[string]any{"dnsServers": []any{}},
	}
	if errs := checkSchema("", s, bad); len(errs) != 4 {
		t.Errorf("checker found %d problems in a bad document, want 4: %q", len(errs), errs)
	}
}

func TestEveryKeyIsDescribedOnce(t *testing.T) {
	t.Parallel()
	for _, l := range leaves() {
		hasEnv := envFor(l.key) != ""
		hasDesc := ruleFor(l.key).desc != ""
		if hasEnv == hasDesc {
			t.Errorf("%s: env var present = %v, rule description present = %v; want exactly one", l.key, hasEnv, hasDesc)
		}
	}
	for _, e := range envTable {
		if _, ok := leafByKey(e.Key); !ok || e.Description == "" || !strings.HasPrefix(e.Name, "ATELIER_") {
			t.Errorf("env %s: key %s missing or no description", e.Name, e.Key)
		}
	}
	for _, r := range rules {
		if _, ok := leafByKey(r.key); !ok {
			t.Errorf("rule for unknown key %s", r.key)
		}
	}
}

func TestEnvNamesMatchTheContract(t *testing.T) {
	t.Parallel()
	// The seed's table plus the design's names: renaming any breaks operators.
	want := map[string]string{
		"ATELIER_BASE_DOMAIN": "domain.baseDomain", "ATELIER_DASHBOARD_DOMAIN": "domain.dashboard",
		"ATELIER_TLS_EMAIL": "domain.tls.email", "ATELIER_TLS_CERT_PATH": "domain.tls.certPath",
		"ATELIER_TLS_KEY_PATH": "domain.tls.keyPath", "ATELIER_SSH_PROXY_PORT": "domain.ssh.port",
		"ATELIER_SSH_PROXY_HOSTNAME": "domain.ssh.hostname", "ATELIER_GITHUB_CLIENT_ID": "auth.github.clientId",
		"ATELIER_GITHUB_CLIENT_SECRET": "auth.github.clientSecret", "ATELIER_JWT_SECRET": "auth.jwtSecret",
		"ATELIER_AUTH_ALLOWED_ORG": "auth.allowedOrg", "ATELIER_AUTH_ALLOWED_USERS": "auth.allowedUsers",
		"ATELIER_SERVER_MODE": "server.mode", "ATELIER_SERVER_PORT": "server.port",
		"ATELIER_SERVER_HOST": "server.host", "ATELIER_MAX_SANDBOXES": "server.maxSandboxes",
		"ATELIER_BRIDGE_NAME": "network.bridgeName", "ATELIER_BRIDGE_IP": "network.bridgeIp",
		"ATELIER_GUEST_IP_START": "network.guestIpStart", "ATELIER_DNS_SERVERS": "network.dnsServers",
		"ATELIER_EGRESS_ALLOW_CIDRS": "network.egressAllowCidrs",
		"ATELIER_DATA_DIR":           "server.dataDir", "ATELIER_STATE_DIR": "sandbox.stateDir",
		"ATELIER_LOG_DIR": "sandbox.logDir", "ATELIER_SANDBOX_RUNTIME": "sandbox.runtime",
		"ATELIER_HTTP_PORT": "domain.httpPort", "ATELIER_HTTPS_PORT": "domain.httpsPort",
		"ATELIER_FIRECRACKER_BIN":          "advanced.server.firecracker.binaryPath",
		"ATELIER_KERNEL_PATH":              "advanced.server.firecracker.kernelPath",
		"ATELIER_REGISTRY_PORT":            "advanced.server.verdaccio.port",
		"ATELIER_VERDACCIO_PORT":           "advanced.server.verdaccio.port",
		"ATELIER_QUOTA_RUNNING_PER_USER":   "quotas.runningPerUser",
		"ATELIER_QUOTA_SANDBOXES_PER_USER": "quotas.sandboxesPerUser",
		"ATELIER_QUOTA_DISK_GB_PER_USER":   "quotas.diskGbPerUser",
	}
	got := map[string]string{}
	for _, e := range EnvVars() {
		if _, dup := got[e.Name]; dup {
			t.Errorf("%s listed twice", e.Name)
		}
		got[e.Name] = e.Key
	}
	for name, key := range want {
		if got[name] != key {
			t.Errorf("%s sets %q, want %q", name, got[name], key)
		}
	}
}

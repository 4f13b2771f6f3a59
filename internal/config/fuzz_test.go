package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"unicode/utf8"
)

func FuzzLoad(f *testing.F) {
	example, err := FullExample()
	if err != nil {
		f.Fatal(err)
	}
	seeds := []struct {
		file string
		env  uint8
		val  string
	}{
		{string(example), 0, "example.com"},
		{"{}", 19, "4000"},
		{`{"server": {"mode": "mock", "port": "x"}}`, 19, "12x"},
		{`{"network": {"bridgeIp": "10.0.0.1", "bridgePrefix": 31}}`, 28, "-1"},
		{`{"network": {"guestIpStart": 9223372036854775807, "bridgePrefix": -9223372036854775808}}`, 27, "::1"},
		{`{"domain": {"unknown": {"deep": [[[{}]]]}}}`, 29, ", ,1.1.1.1,"},
		{`{"auth": {"allowedUsers": ["a", 1]}}`, 15, "a,b"},
		{"[", 10, "\x00"},
		{"null", 13, "\xff"},
		{`{"$schema": 1}`, 17, "production"},
		{"{\"server\": {\"port\": 1}, \"server\": {\"port\": 2}}", 44, "99999999999999999999"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.file), s.env, s.val)
	}
	f.Fuzz(func(t *testing.T, data []byte, which uint8, val string) {
		dir := t.TempDir()
		path := filepath.Join(dir, "c.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ev := envTable[int(which)%len(envTable)]
		c, err := Load(Options{File: path, Env: []string{ev.Name + "=" + val}})
		if err != nil {
			return
		}
		_ = c.Validate()
		_, _, _, _ = c.GuestRange()
		_ = c.URLPatterns()
		_ = c.OAuthCallbackURL()
		_ = c.ManagerAddr()
		b, err := c.Redacted().JSON()
		if err != nil {
			t.Fatalf("JSON of a loaded config: %v", err)
		}
		if !utf8.ValidString(val) {
			return // JSON replaces invalid UTF-8, so the round trip cannot be exact.
		}
		b, err = c.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := Load(Options{File: path, Env: []string{}})
		if err != nil {
			t.Fatalf("reloading JSON(): %v\n%s", err, b)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", again, c)
		}
	})
}

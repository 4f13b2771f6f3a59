package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestLoggerJSON: the journal gets one JSON object per line with the
// attributes as fields (sandbox_id included), not text to re-parse.
func TestLoggerJSON(t *testing.T) {
	var b bytes.Buffer
	log, err := newLogger(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("sandbox started", "sandbox_id", "abcdefghijkl")
	log.Debug("hidden")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("not one JSON line: %q: %v", b.String(), err)
	}
	if m["msg"] != "sandbox started" || m["sandbox_id"] != "abcdefghijkl" || m["level"] != "INFO" {
		t.Fatalf("fields %v", m)
	}
	if _, err := newLogger(&b, "info", "xml"); err == nil {
		t.Fatal("unknown format accepted")
	}
}

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// TestCLIResize: sandbox resize grows the disk by name, refusals name
// --disk-gb (missing, smaller, not a size), and promote of a sandbox
// without a workspace says why.
func TestCLIResize(t *testing.T) {
	url, _ := startMockServer(t)
	ctx := context.Background()
	run := func(args ...string) cliRun { t.Helper(); return cli(t, ctx, url, "", args...) }
	run("sandbox", "create", "--name", "grow").ok(t, "create")
	t.Cleanup(func() { run("sandbox", "rm", "grow") })

	r := run("sandbox", "resize", "grow", "--disk-gb", "12").ok(t, "resize")
	if !strings.Contains(r.out, "disk of grow (") || !strings.Contains(r.out, "is 12 GiB") {
		t.Fatalf("resize printed %q", r.out)
	}
	r = run("--json", "sandbox", "get", "grow").ok(t, "get")
	var v struct{ DiskBytes int64 }
	_ = json.Unmarshal([]byte(r.out), &v)
	if v.DiskBytes != 12<<30 {
		t.Fatalf("disk after resize: %s", r.out)
	}
	run("sandbox", "resize", "grow").fails(t, "no size", "--disk-gb", "required")
	run("sandbox", "resize", "grow", "--disk-gb", "4").fails(t, "smaller", "--disk-gb", "only grow")
	run("sandbox", "resize", "grow", "--disk-gb", "0").fails(t, "zero", "--disk-gb 0")
	run("sandbox", "promote", "grow").fails(t, "promote without workspace", "has no workspace")
}

package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// BenchmarkWorkspaceCreate measures, in mock mode with real agents and a
// token-protected repository served by git http-backend on loopback, the
// time from the create request to the workspace's dev server answering on
// its port: from the image (clone, init command, dev command) beside from
// the workspace's prebuild (dev command only; the repository and the init
// command's output come from the prebuild, which the dev command checks;
// the background pull runs beside it). The init command is a
// one-second stand-in for installing dependencies; the ratio is dominated
// by it, as it is in real workspaces.
func BenchmarkWorkspaceCreate(b *testing.B) {
	const token = "bench-token"
	gs := startGitServer(b, token)
	gs.repo(b, "bench", map[string]string{"README": "bench\n"})
	echo := buildEcho(b)
	dir, err := os.MkdirTemp("", "atlwb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	echoPath := filepath.Join(dir, "edgeecho")
	if err := os.WriteFile(echoPath, echo, 0o755); err != nil {
		b.Fatal(err)
	}
	rt, err := process.New(process.Options{Command: []string{buildAgent(b)}, StateDir: filepath.Join(dir, "s", "mock"),
		SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	// Mock mode never starts from a prebuild (its files are not on the
	// volume); these mock volumes carry the build's home into the
	// prebuild, as a disk snapshot does, so a sandbox from it has the
	// clone and the init command's output (the dev command needs it).
	vols := &homeVolumes{Volumes: stmock.New(filepath.Join(dir, "s", "overlays")), rt: rt, saved: filepath.Join(dir, "saved")}
	srv, stop := startMockManagerWith(b, dir, nil, Options{Drivers: &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: vols}})
	b.Cleanup(func() { stop() })
	srv.Provisioner.NoPrebuildStart = false
	api := "http://" + srv.Addr()
	call := jsonCaller(b, api, 120*time.Second)
	_, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gs.URL, "token": token})
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	port := freePort(b)
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "bench", "config": map[string]any{
		"repos":        []any{map[string]any{"url": gs.URL + "/bench.git", "sourceId": src.ID}},
		"initCommands": []string{"sleep 1; cat bench/README > built.txt"},
		"devCommands":  []any{map[string]any{"name": "web", "command": fmt.Sprintf("test -f built.txt && exec %s -addr 127.0.0.1:%d", echoPath, port), "port": port}},
	}})
	if code != 201 {
		b.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)

	once := func() time.Duration {
		t0 := time.Now()
		code, body := call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
		var sb struct{ ID, Status string }
		_ = json.Unmarshal(body, &sb)
		if code != 201 || sb.Status != "running" {
			b.Fatalf("create: %d %s", code, body)
		}
		for {
			res, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
			if err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					break
				}
			}
			if time.Since(t0) > time.Minute {
				b.Fatal("dev server never answered")
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := time.Since(t0)
		if code, body := call("DELETE", "/api/sandboxes/"+sb.ID, nil); code != 204 {
			b.Fatalf("destroy: %d %s", code, body)
		}
		return d
	}
	const n = 10
	measure := func() []time.Duration {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			ds = append(ds, once())
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds
	}
	pct := func(ds []time.Duration, p float64) float64 {
		return float64(ds[int(p*float64(len(ds)-1)+0.5)].Microseconds()) / 1000
	}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		image := measure()
		call("POST", "/api/workspaces/"+ws.ID+"/prebuild", nil)
		for end := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
			_, body := call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
			var pb struct{ Status string }
			_ = json.Unmarshal(body, &pb)
			if pb.Status == "ready" {
				break
			}
			if pb.Status == "failed" || time.Now().After(end) {
				b.Fatalf("prebuild: %s", body)
			}
		}
		pre := measure()
		b.ReportMetric(pct(image, 0.5), "image-p50-ms")
		b.ReportMetric(pct(image, 0.99), "image-p99-ms")
		b.ReportMetric(pct(pre, 0.5), "prebuild-p50-ms")
		b.ReportMetric(pct(pre, 0.99), "prebuild-p99-ms")
		b.ReportMetric(pct(image, 0.5)/pct(pre, 0.5), "p50-ratio")
		call("DELETE", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	}
}

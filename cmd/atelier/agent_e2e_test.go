package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func call(t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	// None of these may reach the sandbox; the agent would reject nothing,
	// so this only checks the proxy copes with them.
	req.Header.Set("Cookie", "atelier_session=secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// agentPIDs lists processes running the embedded agent for this sandbox.
func agentPIDs(t *testing.T, id string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "--sandbox-id\x00"+id) {
			st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				continue
			}
			out = append(out, e.Name())
		}
	}
	return out
}

func TestAgentThroughAPI(t *testing.T) {
	url := startMock(t)
	code, b := call(t, "POST", url+"/api/sandboxes", `{}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, b)
	}
	var sb struct{ ID, Status string }
	json.Unmarshal(b, &sb)
	base := url + "/api/sandboxes/" + sb.ID
	t.Cleanup(func() { call(t, "DELETE", base, "") })
	if len(agentPIDs(t, sb.ID)) != 1 {
		t.Fatalf("expected one agent process for %s", sb.ID)
	}

	code, b = call(t, "POST", base+"/exec", `{"argv":["sh","-c","echo hi; echo err >&2; exit 3"]}`)
	var res struct {
		ExitCode       int
		Stdout, Stderr string
	}
	json.Unmarshal(b, &res)
	if code != 200 || res.ExitCode != 3 || res.Stdout != "hi\n" || res.Stderr != "err\n" {
		t.Fatalf("exec: %d %s", code, b)
	}

	code, b = call(t, "PUT", base+"/files?path=notes/a.txt&parents=true", "hello file")
	if code >= 300 {
		t.Fatalf("write: %d %s", code, b)
	}
	code, b = call(t, "GET", base+"/files?path=notes/a.txt", "")
	if code != 200 || !strings.Contains(string(b), "hello file") {
		t.Fatalf("read: %d %s", code, b)
	}
	if code, b = call(t, "GET", base+"/files?path=/etc/shadow", ""); code != 403 {
		t.Fatalf("read outside the sandbox: %d %s", code, b)
	}

	// A terminal over WebSocket, through the manager.
	code, b = call(t, "POST", base+"/terminals", `{"cmd":["sh"],"cols":80,"rows":24}`)
	var term struct{ ID string }
	json.Unmarshal(b, &term)
	if code >= 300 || term.ID == "" {
		t.Fatalf("create terminal: %d %s", code, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/terminals/"+term.ID+"/attach", nil)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("echo hel''lo-term\n")); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	for !strings.Contains(seen.String(), "hello-term") {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("read terminal (saw %q): %v", seen.String(), err)
		}
		if typ == websocket.MessageBinary {
			seen.Write(data)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// Stop ends the agent; start brings it back with the files kept.
	if code, b = call(t, "POST", base+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if pids := agentPIDs(t, sb.ID); len(pids) != 0 {
		t.Fatalf("agent still running after stop: %v", pids)
	}
	if code, _ = call(t, "POST", base+"/exec", `{"argv":["true"]}`); code != 409 {
		t.Fatalf("exec on a stopped sandbox: %d, want 409", code)
	}
	if code, b = call(t, "POST", base+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	if code, b = call(t, "GET", base+"/files?path=notes/a.txt", ""); code != 200 || !strings.Contains(string(b), "hello file") {
		t.Fatalf("file after restart: %d %s", code, b)
	}
	if code, b = call(t, "DELETE", base, ""); code != 204 {
		t.Fatalf("destroy: %d %s", code, b)
	}
	if pids := agentPIDs(t, sb.ID); len(pids) != 0 {
		t.Fatalf("agent still running after destroy: %v", pids)
	}
}

package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// crashServiceSteps is TestCrashAtEveryStep for stop, start and the
// browser's start and stop: the manager dies before or after each step,
// and after its restart the sandbox is truthful, the next operation works
// and the services come back as they were wanted.
func crashServiceSteps(t *testing.T, f *fixture) {
	servicesBack := func(t *testing.T, id string, browser bool) {
		t.Helper()
		until(t, 20*time.Second, "services back", func() bool {
			v := f.sandboxView(t, id)
			b := serviceNamed(v, "browser")
			return v.Status == "running" && serviceNamed(v, "vscode").Ready && b.Wanted == browser && (!browser || b.Ready)
		})
	}
	destroy := func(t *testing.T, id string) {
		t.Helper()
		if code, b := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
			t.Fatalf("destroy: %d %s", code, b)
		}
		f.assertNoLeaks(t)
	}
	newSandbox := func(t *testing.T, browser bool) string {
		t.Helper()
		id, code, b := f.createFrom(t, servicesImage)
		if code != 201 {
			t.Fatalf("create: %d %s", code, b)
		}
		if browser {
			if code, _ := f.browser(t, "POST", id, "start"); code != 200 {
				t.Fatal("browser start")
			}
		}
		return id
	}
	status := func(t *testing.T, id string) (string, string) {
		t.Helper()
		code, b := f.call(t, "GET", "/api/sandboxes/"+id, "")
		var v struct{ Status, Error string }
		if code != 200 || json.Unmarshal(b, &v) != nil {
			t.Fatalf("get %s: %d %s", id, code, b)
		}
		return v.Status, v.Error
	}

	for _, step := range []string{"runtime", "link", "hooks"} {
		for _, when := range []string{"before", "after"} {
			point := "stop:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				m := f.spawn(t, point)
				id := newSandbox(t, true)
				go f.tryCall("POST", "/api/sandboxes/"+id+"/stop")
				m.killedAt(t, point)
				m = f.spawn(t, "")
				if st, msg := status(t, id); st != "stopped" {
					t.Fatalf("after a crash in stop: %s %q, want stopped", st, msg)
				}
				if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
					t.Fatalf("start after the crash: %d %s", code, b)
				}
				servicesBack(t, id, true)
				destroy(t, id)
				m.stop()
			})
		}
	}
	for _, step := range []string{"lease", "volume", "link", "boot", "agent", "services", "hooks"} {
		for _, when := range []string{"before", "after"} {
			point := "start:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				m := f.spawn(t, point)
				id := newSandbox(t, true)
				if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
					t.Fatalf("stop: %d %s", code, b)
				}
				go f.tryCall("POST", "/api/sandboxes/"+id+"/start")
				m.killedAt(t, point)
				m = f.spawn(t, "")
				if st, msg := status(t, id); st != "error" || !strings.Contains(msg, "interrupted") {
					t.Fatalf("after a crash in start: %s %q, want error (interrupted)", st, msg)
				}
				if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
					t.Fatalf("start again: %d %s", code, b)
				}
				servicesBack(t, id, true)
				destroy(t, id)
				m.stop()
			})
		}
	}
	for _, op := range []string{"browser-start", "browser-stop"} {
		for _, when := range []string{"before", "after"} {
			point := op + ":service:" + when
			t.Run(point, func(t *testing.T) {
				m := f.spawn(t, point)
				on := op == "browser-stop" // running before the op
				id := newSandbox(t, on)
				go f.tryCall("POST", "/api/sandboxes/"+id+"/browser/"+strings.TrimPrefix(op, "browser-"))
				m.killedAt(t, point)
				m = f.spawn(t, "")
				if st, msg := status(t, id); st != "running" {
					t.Fatalf("after a crash in %s: %s %q, want running", op, st, msg)
				}
				// The browser is as the agent says: the op happened or not.
				if when == "after" {
					on = !on
				}
				code, got := f.browser(t, "GET", id, "")
				if code != 200 || got.Service.Wanted != on {
					t.Fatalf("browser after a crash at %s: %d %+v, want wanted=%v", point, code, got, on)
				}
				// The operation can be made again, and holds.
				if code, _ := f.browser(t, "POST", id, strings.TrimPrefix(op, "browser-")); code != 200 {
					t.Fatalf("%s again failed", op)
				}
				servicesBack(t, id, op == "browser-start")
				destroy(t, id)
				m.stop()
			})
		}
	}
}

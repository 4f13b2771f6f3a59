package guestfiles

import (
	"errors"
	"testing"

	"atelier/internal/store"
)

func TestMerge(t *testing.T) {
	f := func(p, c string) store.ConfigFile { return store.ConfigFile{Path: p, Content: c, Mode: 0o644} }
	for _, tc := range []struct {
		name       string
		global, ws []store.ConfigFile
		want       map[string]string
	}{
		{"global only", []store.ConfigFile{f("~/a.json", `{"x":1}`)}, nil, map[string]string{"~/a.json": `{"x":1}`}},
		{"workspace only", nil, []store.ConfigFile{f("~/b", "b")}, map[string]string{"~/b": "b"}},
		{"json deep merge", []store.ConfigFile{f("~/.config/opencode/opencode.json", `{"theme":"dark","model":{"id":"a","temp":1},"keep":[1,2]}`)},
			[]store.ConfigFile{f("~/.config/opencode/opencode.json", `{"model":{"id":"b"},"keep":[3],"new":true}`)},
			map[string]string{"~/.config/opencode/opencode.json": "{\n  \"keep\": [\n    3\n  ],\n  \"model\": {\n    \"id\": \"b\",\n    \"temp\": 1\n  },\n  \"new\": true,\n  \"theme\": \"dark\"\n}\n"}},
		{"workspace null replaces a key", []store.ConfigFile{f("~/s.json", `{"a":{"b":1}}`)}, []store.ConfigFile{f("~/s.json", `{"a":null}`)},
			map[string]string{"~/s.json": "{\n  \"a\": null\n}\n"}},
		{"json array: workspace wins whole", []store.ConfigFile{f("~/l.json", `[1]`)}, []store.ConfigFile{f("~/l.json", `{"a":1}`)},
			map[string]string{"~/l.json": `{"a":1}`}},
		{"other files: workspace wins", []store.ConfigFile{f("/etc/motd", "global"), f("~/g", "g")}, []store.ConfigFile{f("/etc/motd", "ws")},
			map[string]string{"/etc/motd": "ws", "~/g": "g"}},
		{"non-.json JSON not merged", []store.ConfigFile{f("~/x.conf", `{"a":1}`)}, []store.ConfigFile{f("~/x.conf", `{"b":2}`)},
			map[string]string{"~/x.conf": `{"b":2}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Merge(tc.global, tc.ws)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d files %+v, want %d", len(got), got, len(tc.want))
			}
			for i, g := range got {
				if i > 0 && got[i-1].Path >= g.Path {
					t.Errorf("not sorted by path: %q before %q", got[i-1].Path, g.Path)
				}
				if tc.want[g.Path] != g.Content {
					t.Errorf("%s = %q, want %q", g.Path, g.Content, tc.want[g.Path])
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []File
		field string // "" valid
	}{
		{"home and etc", []File{{Path: "~/.config/a.json", Content: "{}"}, {Path: "/etc/b.conf", Content: "x", Mode: "0600"}}, ""},
		{"dotdot", []File{{Path: "~/../root/.ssh/authorized_keys", Content: "k"}}, "files[0].path"},
		{"dotdot under etc", []File{{Path: "/etc/../root/x", Content: "k"}}, "files[0].path"},
		{"dot segment", []File{{Path: "~/./a", Content: "k"}}, "files[0].path"},
		{"double slash", []File{{Path: "~//a", Content: "k"}}, "files[0].path"},
		{"elsewhere", []File{{Path: "/root/.bashrc", Content: "k"}}, "files[0].path"},
		{"relative", []File{{Path: "a/b", Content: "k"}}, "files[0].path"},
		{"home itself", []File{{Path: "~/", Content: "k"}}, "files[0].path"},
		{"directory", []File{{Path: "/etc/x/", Content: "k"}}, "files[0].path"},
		{"newline", []File{{Path: "~/a\nb", Content: "k"}}, "files[0].path"},
		{"twice", []File{{Path: "~/a", Content: "1"}, {Path: "~/a", Content: "2"}}, "files[1].path"},
		{"bad json", []File{{Path: "~/a.json", Content: "{"}}, "files[0].content"},
		{"bad mode", []File{{Path: "~/a", Content: "x", Mode: "999"}}, "files[0].mode"},
		{"unreadable mode", []File{{Path: "~/a", Content: "x", Mode: "0200"}}, "files[0].mode"},
		{"setuid mode", []File{{Path: "~/a", Content: "x", Mode: "4755"}}, "files[0].mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := Validate(tc.files)
			var fe *FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("valid set refused: %v", err)
			case tc.field == "":
				if len(rows) != len(tc.files) || rows[0].Mode != 0o644 || rows[1].Mode != 0o600 {
					t.Errorf("rows %+v", rows)
				}
			case !errors.As(err, &fe) || fe.Field != tc.field:
				t.Errorf("err %v, want a field error on %s", err, tc.field)
			}
		})
	}
}

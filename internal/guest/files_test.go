package guest

import (
	"bytes"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

func TestFilesRoundTrip(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 20*time.Second)
	p := filepath.Join(a.root, "deep", "er", "note.txt")

	_, err := a.c.WriteFile(ctx, p, strings.NewReader("no parents"), agent.WriteFileOptions{})
	wantAgentError(t, err, 404, agent.CodeNotFound, "")

	fi, err := a.c.WriteFile(ctx, p, strings.NewReader("hello\nworld\n"), agent.WriteFileOptions{Mode: 0o600, Parents: true})
	if err != nil {
		t.Fatal(err)
	}
	if fi.Type != agent.FileTypeFile || fi.Size != 12 || fi.Mode != "0600" {
		t.Fatalf("write answered %+v", fi)
	}
	if st, err := a.c.Stat(ctx, p); err != nil || st.Mode != "0600" || st.Size != 12 {
		t.Fatalf("stat %+v %v", st, err)
	}
	// Rewriting without a mode keeps the existing one.
	if fi, err = a.c.WriteFile(ctx, p, strings.NewReader("hello\nworld\n"), agent.WriteFileOptions{}); err != nil || fi.Mode != "0600" {
		t.Fatalf("rewrite %+v %v", fi, err)
	}

	fc, err := a.c.ReadFile(ctx, p, "", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fc.Content != "hello\nworld\n" || fc.Encoding != agent.EncodingUTF8 || fc.Truncated {
		t.Fatalf("read %+v", fc)
	}
	fc, err = a.c.ReadFile(ctx, p, "", 6, 3)
	if err != nil || fc.Content != "wor" || !fc.Truncated || fc.Size != 12 {
		t.Fatalf("ranged read %+v %v", fc, err)
	}

	bin := []byte{0, 1, 2, 0xff, 0xfe}
	bp := filepath.Join(a.root, "blob.bin")
	if _, err := a.c.WriteFile(ctx, bp, bytes.NewReader(bin), agent.WriteFileOptions{}); err != nil {
		t.Fatal(err)
	}
	fc, err = a.c.ReadFile(ctx, bp, "", 0, 0)
	if err != nil || fc.Encoding != agent.EncodingBase64 {
		t.Fatalf("binary read %+v %v", fc, err)
	}
	if got, err := fc.Bytes(); err != nil || !bytes.Equal(got, bin) {
		t.Fatalf("binary content %v %v", got, err)
	}
	_, err = a.c.ReadFile(ctx, bp, agent.EncodingUTF8, 0, 0)
	wantAgentError(t, err, 400, agent.CodeBadRequest, "encoding")

	// Relative paths are taken from the first root.
	if got, err := a.c.ReadFileBytes(ctx, "deep/er/note.txt"); err != nil || string(got) != "hello\nworld\n" {
		t.Fatalf("relative read %q %v", got, err)
	}

	if _, err := a.c.Mkdir(ctx, agent.MkdirRequest{Path: filepath.Join(a.root, "d1", "d2"), Parents: true, Mode: "0750"}); err != nil {
		t.Fatal(err)
	}
	if st, err := a.c.Stat(ctx, filepath.Join(a.root, "d1", "d2")); err != nil || st.Type != agent.FileTypeDir || st.Mode != "0750" {
		t.Fatalf("mkdir stat %+v %v", st, err)
	}
	_, err = a.c.Mkdir(ctx, agent.MkdirRequest{Path: filepath.Join(a.root, "d1")})
	wantAgentError(t, err, 409, agent.CodeConflict, "")
	if _, err := a.c.Mkdir(ctx, agent.MkdirRequest{Path: filepath.Join(a.root, "d1"), Parents: true}); err != nil {
		t.Fatalf("mkdir -p of an existing dir: %v", err)
	}

	l, err := a.c.List(ctx, a.root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range l.Entries {
		names = append(names, e.Name+":"+e.Type)
	}
	if got := strings.Join(names, ","); got != "blob.bin:file,d1:dir,deep:dir" {
		t.Fatalf("list = %s", got)
	}
	_, err = a.c.List(ctx, p)
	wantAgentError(t, err, 400, agent.CodeBadRequest, "path")

	_, err = a.c.ReadFile(ctx, filepath.Join(a.root, "missing"), "", 0, 0)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")
	err = a.c.Remove(ctx, filepath.Join(a.root, "missing"), false)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")
	err = a.c.Remove(ctx, filepath.Join(a.root, "deep"), false)
	wantAgentError(t, err, 409, agent.CodeConflict, "")
	if err := a.c.Remove(ctx, filepath.Join(a.root, "deep"), true); err != nil {
		t.Fatal(err)
	}
	if err := a.c.Remove(ctx, bp, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a.root, "deep")); !os.IsNotExist(err) {
		t.Fatalf("deep still exists: %v", err)
	}
	err = a.c.Remove(ctx, a.root, true)
	wantAgentError(t, err, 403, agent.CodeForbidden, "")
}

// blockingReader hands out first, then blocks until released, then
// hands out rest.
type blockingReader struct {
	first, rest *bytes.Reader
	release     chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.first.Len() > 0 {
		return b.first.Read(p)
	}
	<-b.release
	return b.rest.Read(p)
}

func TestFilesAtomicWrite(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 20*time.Second)
	p := filepath.Join(a.root, "config.json")
	old := bytes.Repeat([]byte("o"), 1000)
	if err := os.WriteFile(p, old, 0o640); err != nil {
		t.Fatal(err)
	}
	br := &blockingReader{first: bytes.NewReader(bytes.Repeat([]byte("n"), 64<<10)), rest: bytes.NewReader(bytes.Repeat([]byte("N"), 1000)), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := a.c.WriteFile(ctx, p, br, agent.WriteFileOptions{})
		done <- err
	}()
	// Wait until the agent has written the first part to its temp file.
	var tmp string
	eventually(t, 10*time.Second, "temp file with the first part", func() bool {
		m, _ := filepath.Glob(filepath.Join(a.root, ".config.json.tmp-*"))
		if len(m) != 1 {
			return false
		}
		fi, err := os.Stat(m[0])
		tmp = m[0]
		return err == nil && fi.Size() > 0
	})
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, old) {
		t.Fatalf("target changed mid-write: %d bytes, %v", len(got), err)
	}
	close(br.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(p)
	want := append(bytes.Repeat([]byte("n"), 64<<10), bytes.Repeat([]byte("N"), 1000)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("final content has %d bytes, want %d", len(got), len(want))
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want the old 0640 kept", fi.Mode().Perm())
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temp file left behind: %v", err)
	}
}

func TestFilesConfinement(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 20*time.Second)
	outside := filepath.Join(a.dir, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.root, "inside.txt"), []byte("in"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, outside, filepath.Join(a.root, "dirlink"))
	mustSymlink(t, filepath.Join(outside, "secret"), filepath.Join(a.root, "filelink"))
	mustSymlink(t, "../outside/secret", filepath.Join(a.root, "rellink"))
	mustSymlink(t, filepath.Join(a.root, "inside.txt"), filepath.Join(a.root, "goodlink"))

	forbidden := []struct {
		name string
		op   func() error
	}{
		{"dotdot relative", func() error { _, err := a.c.ReadFile(ctx, "../outside/secret", "", 0, 0); return err }},
		{"dotdot absolute", func() error {
			_, err := a.c.ReadFile(ctx, a.root+"/../outside/secret", "", 0, 0)
			return err
		}},
		{"absolute outside", func() error { _, err := a.c.ReadFile(ctx, "/etc/hostname", "", 0, 0); return err }},
		{"through dir symlink", func() error {
			_, err := a.c.ReadFile(ctx, filepath.Join(a.root, "dirlink", "secret"), "", 0, 0)
			return err
		}},
		{"file symlink", func() error {
			_, err := a.c.ReadFile(ctx, filepath.Join(a.root, "filelink"), "", 0, 0)
			return err
		}},
		{"relative symlink", func() error {
			_, err := a.c.ReadFile(ctx, filepath.Join(a.root, "rellink"), "", 0, 0)
			return err
		}},
		{"write through dir symlink", func() error {
			_, err := a.c.WriteFile(ctx, filepath.Join(a.root, "dirlink", "new"), strings.NewReader("x"), agent.WriteFileOptions{})
			return err
		}},
		{"write through file symlink", func() error {
			_, err := a.c.WriteFile(ctx, filepath.Join(a.root, "filelink"), strings.NewReader("x"), agent.WriteFileOptions{})
			return err
		}},
		{"mkdir through symlink", func() error {
			_, err := a.c.Mkdir(ctx, agent.MkdirRequest{Path: filepath.Join(a.root, "dirlink", "sub", "x"), Parents: true})
			return err
		}},
		{"list symlinked dir", func() error { _, err := a.c.List(ctx, filepath.Join(a.root, "dirlink")); return err }},
		{"delete through symlink", func() error { return a.c.Remove(ctx, filepath.Join(a.root, "dirlink", "secret"), false) }},
		{"stat outside", func() error { _, err := a.c.Stat(ctx, outside); return err }},
	}
	for _, tt := range forbidden {
		t.Run(tt.name, func(t *testing.T) {
			wantAgentError(t, tt.op(), 403, agent.CodeForbidden, "")
		})
	}
	if b, err := os.ReadFile(filepath.Join(outside, "secret")); err != nil || string(b) != "s" {
		t.Fatalf("outside file touched: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); !os.IsNotExist(err) {
		t.Fatal("a write escaped the root")
	}
	if _, err := os.Stat(filepath.Join(outside, "sub")); !os.IsNotExist(err) {
		t.Fatal("a mkdir escaped the root")
	}

	// Symlinks that stay inside work, and a link itself can be described
	// and removed without following it.
	if b, err := a.c.ReadFileBytes(ctx, filepath.Join(a.root, "goodlink")); err != nil || string(b) != "in" {
		t.Fatalf("inside symlink read %q %v", b, err)
	}
	st, err := a.c.Stat(ctx, filepath.Join(a.root, "filelink"))
	if err != nil || st.Type != agent.FileTypeSymlink {
		t.Fatalf("stat of link %+v %v", st, err)
	}
	if err := a.c.Remove(ctx, filepath.Join(a.root, "dirlink"), true); err != nil {
		t.Fatalf("remove link: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "secret")); err != nil {
		t.Fatalf("removing the link removed its target: %v", err)
	}
}

// TestFilesSymlinksInside: symlinks that resolve inside a root, relative
// or absolute, to the same root or another one, are followed by reads,
// writes and listings; stat and delete act on the link itself.
func TestFilesSymlinksInside(t *testing.T) {
	var second string
	a := startAgent(t, func(o *Options) {
		second = filepath.Join(filepath.Dir(o.FileRoots[0]), "second")
		if err := os.MkdirAll(second, 0o755); err != nil {
			t.Fatal(err)
		}
		o.FileRoots = append(o.FileRoots, second)
	})
	ctx := ctxT(t, 20*time.Second)
	sub := filepath.Join(a.root, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "f"), []byte("sub"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(second, "g"), []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, "sub", filepath.Join(a.root, "rel"))                          // relative, same root
	mustSymlink(t, sub, filepath.Join(a.root, "abs"))                            // absolute, same root
	mustSymlink(t, second, filepath.Join(a.root, "other"))                       // absolute, another root
	mustSymlink(t, filepath.Join(a.root, "rel"), filepath.Join(a.root, "chain")) // link to a link

	for _, p := range []string{"rel/f", "abs/f", "chain/f"} {
		if b, err := a.c.ReadFileBytes(ctx, filepath.Join(a.root, p)); err != nil || string(b) != "sub" {
			t.Errorf("read %s: %q %v", p, b, err)
		}
	}
	if b, err := a.c.ReadFileBytes(ctx, filepath.Join(a.root, "other", "g")); err != nil || string(b) != "second" {
		t.Errorf("read through a link to another root: %q %v", b, err)
	}
	if _, err := a.c.WriteFile(ctx, filepath.Join(a.root, "rel", "new"), strings.NewReader("n"), agent.WriteFileOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(sub, "new")); err != nil || string(b) != "n" {
		t.Errorf("write through a link: %q %v", b, err)
	}
	if _, err := a.c.WriteFile(ctx, filepath.Join(a.root, "other", "h"), strings.NewReader("h"), agent.WriteFileOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(second, "h")); err != nil {
		t.Errorf("write through a link to another root: %v", err)
	}
	l, err := a.c.List(ctx, filepath.Join(a.root, "chain"))
	if err != nil || l.Path != sub || len(l.Entries) != 2 {
		t.Fatalf("list through a chain: %+v %v", l, err)
	}
	st, err := a.c.Stat(ctx, filepath.Join(a.root, "rel"))
	if err != nil || st.Type != agent.FileTypeSymlink || st.LinkTarget != "sub" {
		t.Fatalf("stat of a link: %+v %v", st, err)
	}
	l, err = a.c.List(ctx, a.root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Entries {
		if e.Name == "abs" && (e.Type != agent.FileTypeSymlink || e.LinkTarget != sub) {
			t.Errorf("listed link %+v", e)
		}
	}
	if err := a.c.Remove(ctx, filepath.Join(a.root, "chain"), true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(a.root, "rel")); err != nil {
		t.Errorf("removing a link removed what it points to: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sub, "f")); err != nil {
		t.Errorf("removing a link removed what it points to: %v", err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestFilesBatch(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 20*time.Second)
	npmrc := filepath.Join(a.root, ".npmrc")
	creds := filepath.Join(a.root, ".aws", "credentials")
	res, err := a.c.WriteFiles(ctx, []agent.FileWrite{
		{Path: npmrc, Content: "registry=http://172.16.0.1:4873/\n", Mode: "0644"},
		{Path: creds, Content: "W2RlZmF1bHRdCg==", Encoding: agent.EncodingBase64, Mode: "0600", Parents: true},
		{Path: "/etc/npmrc-outside", Content: "x"},
		{Path: filepath.Join(a.root, "bad-mode"), Content: "x", Mode: "999"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Results) != 4 {
		t.Fatalf("%d results", len(res.Results))
	}
	want := []struct {
		ok   bool
		code string
	}{{true, ""}, {true, ""}, {false, agent.CodeForbidden}, {false, agent.CodeBadRequest}}
	for i, w := range want {
		r := res.Results[i]
		if r.OK != w.ok || (r.Error != nil) == w.ok || (r.Error != nil && r.Error.Code != w.code) {
			t.Errorf("result %d = %+v, want ok=%v code %q", i, r, w.ok, w.code)
		}
	}
	if res.Err() == nil {
		t.Error("BatchResult.Err() is nil despite failures")
	}
	if b, _ := os.ReadFile(creds); string(b) != "[default]\n" {
		t.Fatalf("credentials = %q", b)
	}
	if fi, _ := os.Stat(creds); fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials mode %v", fi.Mode().Perm())
	}

	del, err := a.c.DeleteFiles(ctx, []string{npmrc, creds, filepath.Join(a.root, "never-there")}, false)
	if err != nil {
		t.Fatal(err)
	}
	if del.Err() != nil {
		t.Fatalf("delete batch failed: %v", del.Err())
	}
	if !del.Results[0].Existed || !del.Results[1].Existed || del.Results[2].Existed {
		t.Fatalf("existed flags wrong: %+v", del.Results)
	}
	for _, p := range []string{npmrc, creds} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s still exists", p)
		}
	}
}

func TestFilesOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	p := filepath.Join(a.root, "home", "cfg", "file")
	fi, err := a.c.WriteFile(ctx, p, strings.NewReader("x"), agent.WriteFileOptions{Owner: "nobody", Parents: true})
	if err != nil {
		t.Fatal(err)
	}
	if fi.UID != uid {
		t.Fatalf("file uid %d, want %d", fi.UID, uid)
	}
	// Parents created for the file get its owner too.
	st, err := a.c.Stat(ctx, filepath.Join(a.root, "home"))
	if err != nil || st.UID != uid {
		t.Fatalf("parent %+v %v", st, err)
	}
	// A rewrite without owner keeps it.
	if fi, err = a.c.WriteFile(ctx, p, strings.NewReader("y"), agent.WriteFileOptions{}); err != nil || fi.UID != uid {
		t.Fatalf("rewrite %+v %v", fi, err)
	}
	_, err = a.c.WriteFile(ctx, p, strings.NewReader("y"), agent.WriteFileOptions{Owner: "no-such-user-xyz"})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "owner")
}

package guest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

// gitT runs git for test setup.
func gitT(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	a := startAgent(t, nil)
	ctx := ctxT(t, 60*time.Second)
	repo := filepath.Join(a.root, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	gitT(t, repo, "init", "-q", "-b", "main")
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(repo, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.txt", "one\ntwo\nthree\n")

	// An unborn branch: status works, diff compares with the empty tree.
	st, err := a.c.GitStatus(ctx, []string{repo})
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Repos[0]; r.Error != nil || r.Branch != "main" || !r.Dirty || r.LastCommit != nil {
		t.Fatalf("unborn status %+v (err %+v)", r, r.Error)
	}
	gitT(t, repo, "add", "a.txt")
	d, err := a.c.GitDiff(ctx, []string{repo})
	if err != nil {
		t.Fatal(err)
	}
	if r := d.Repos[0]; r.Error != nil || r.TotalAdded != 3 {
		t.Fatalf("unborn diff %+v", r)
	}
	gitT(t, repo, "commit", "-q", "-m", "first")

	// Staged and unstaged changes to one file, plus an untracked file.
	write("a.txt", "one\nTWO\nthree\nfour\n")
	gitT(t, repo, "add", "a.txt")
	write("a.txt", "one\nTWO\nthree\nfour\nfive\n")
	write("b.txt", "x\ny")

	notRepo := filepath.Join(a.root, "plain")
	if err := os.Mkdir(notRepo, 0o755); err != nil {
		t.Fatal(err)
	}
	st, err = a.c.GitStatus(ctx, []string{repo, notRepo, "/etc"})
	if err != nil {
		t.Fatal(err)
	}
	r := st.Repos[0]
	if r.Error != nil || r.Branch != "main" || !r.Dirty || r.Changed != 2 || r.LastCommit == nil || r.LastCommit.Subject != "first" {
		t.Fatalf("status %+v", r)
	}
	if e := st.Repos[1].Error; e == nil || e.Code != agent.CodeNotARepository {
		t.Fatalf("non-repo status error %+v", e)
	}
	if e := st.Repos[2].Error; e == nil || e.Code != agent.CodeForbidden {
		t.Fatalf("outside-root status error %+v", e)
	}

	d, err = a.c.GitDiff(ctx, []string{repo})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]agent.GitFileDiff{}
	for _, f := range d.Repos[0].Files {
		if _, dup := files[f.Path]; dup {
			t.Fatalf("%s listed twice", f.Path)
		}
		files[f.Path] = f
	}
	if f := files["a.txt"]; f.Added != 3 || f.Removed != 1 {
		t.Fatalf("a.txt diff %+v", f)
	}
	if f := files["b.txt"]; !f.Untracked || f.Added != 2 {
		t.Fatalf("b.txt diff %+v", f)
	}
	if d.Repos[0].TotalAdded != 5 || d.Repos[0].TotalRemoved != 1 {
		t.Fatalf("totals %+v", d.Repos[0])
	}

	cm, err := a.c.GitCommit(ctx, agent.GitCommitRequest{Path: repo, Message: "second; $(touch pwned)", AuthorName: "Ada", AuthorEmail: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if head := gitT(t, repo, "rev-parse", "HEAD"); cm.Hash != head || cm.Branch != "main" {
		t.Fatalf("commit %+v, HEAD %s", cm, head)
	}
	if got := gitT(t, repo, "log", "-1", "--format=%an <%ae>|%s"); got != "Ada <ada@example.com>|second; $(touch pwned)" {
		t.Fatalf("commit metadata %q", got)
	}
	if _, err := os.Stat(filepath.Join(repo, "pwned")); !os.IsNotExist(err) {
		t.Fatal("commit message was run by a shell")
	}
	st, _ = a.c.GitStatus(ctx, []string{repo})
	if st.Repos[0].Dirty {
		t.Fatalf("dirty after commit: %+v", st.Repos[0])
	}
	_, err = a.c.GitCommit(ctx, agent.GitCommitRequest{Path: repo, Message: "again", AuthorName: "Ada", AuthorEmail: "ada@example.com"})
	wantAgentError(t, err, 409, agent.CodeNothingToDo, "")
	_, err = a.c.GitCommit(ctx, agent.GitCommitRequest{Path: repo})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "message")

	// Push to a bare remote inside the root; then to a broken one.
	bare := filepath.Join(a.root, "remote.git")
	gitT(t, a.root, "init", "-q", "--bare", bare)
	gitT(t, repo, "remote", "add", "origin", bare)
	pr, err := a.c.GitPush(ctx, agent.GitPushRequest{Path: repo})
	if err != nil {
		t.Fatal(err)
	}
	if pr.Remote != "origin" || pr.Branch != "main" {
		t.Fatalf("push %+v", pr)
	}
	if got := gitT(t, bare, "rev-parse", "main"); got != cm.Hash {
		t.Fatalf("remote main %s, want %s", got, cm.Hash)
	}
	st, _ = a.c.GitStatus(ctx, []string{repo})
	if r := st.Repos[0]; r.Upstream != "origin/main" || r.Ahead != 0 || r.Behind != 0 {
		t.Fatalf("upstream status %+v", r)
	}
	gitT(t, repo, "remote", "add", "broken", filepath.Join(a.root, "nowhere.git"))
	_, err = a.c.GitPush(ctx, agent.GitPushRequest{Path: repo, Remote: "broken"})
	wantAgentError(t, err, 502, agent.CodeGitFailed, "")
	_, err = a.c.GitPush(ctx, agent.GitPushRequest{Path: repo, Remote: "--upload-pack=touch pwned"})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "remote")
}

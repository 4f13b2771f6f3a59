package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"atelier/internal/agent"
)

// Git bounds.
const (
	maxGitRepos        = 64
	gitParallel        = 4
	gitTimeout         = 30 * time.Second
	gitPushTimeout     = 2 * time.Minute
	gitMaxPushTimeout  = 10 * time.Minute
	gitMaxOutput       = 4 << 20
	maxUntrackedCount  = 1000
	maxUntrackedBytes  = 1 << 20
	untrackedSniffSize = 8 << 10
)

// gitResult is one finished git invocation.
type gitResult struct {
	stdout, stderr string
	code           int
}

// repo is a validated repository path and the identity git runs as.
type repo struct {
	path string
	id   *identity
}

// openRepo checks that a path is inside the file roots and is a
// directory. When the agent is root, git runs as the directory's owner:
// objects it writes then stay usable by that user, and git's
// "dubious ownership" guard is satisfied without touching any config.
func (s *Server) openRepo(field, path string) (*repo, error) {
	p, err := s.fs.resolve(field, path, true)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, pathError(field, err)
	}
	if !fi.IsDir() {
		return nil, errBadField(field, "%s is not a directory", p)
	}
	rp := &repo{path: p, id: &identity{uid: os.Geteuid(), gid: os.Getegid()}}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 && ok && st.Uid != 0 {
		id := &identity{uid: int(st.Uid), gid: int(st.Gid), home: p, name: strconv.Itoa(int(st.Uid))}
		if u, err := user.LookupId(strconv.Itoa(int(st.Uid))); err == nil {
			id.name, id.home = u.Username, u.HomeDir
		}
		id.cred = &syscall.Credential{Uid: st.Uid, Gid: st.Gid}
		rp.id = id
	}
	return rp, nil
}

// git runs one git command in the repo as argv (never through a shell).
func (s *Server) git(ctx context.Context, rp *repo, extraEnv map[string]string, args ...string) (*gitResult, error) {
	env := map[string]string{
		// Never wait for a password prompt; credentials come from a helper.
		"GIT_TERMINAL_PROMPT": "0",
		"LC_ALL":              "C",
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	envList, err := buildEnv(rp.id, env)
	if err != nil {
		return nil, err
	}
	path, err := lookPath("git", envValue(envList, "PATH"))
	if err != nil {
		return nil, fmt.Errorf("find git: %w", err)
	}
	cmd := exec.Command(path, append([]string{"-C", rp.path}, args...)...)
	cmd.Env = envList
	cmd.Dir = rp.path
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: rp.id.cred, Pdeathsig: syscall.SIGKILL}
	stdout := &capBuffer{max: gitMaxOutput}
	stderr := &capBuffer{max: gitMaxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = pipeGrace
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start git: %w", err)
	}
	pgid := cmd.Process.Pid
	stop := context.AfterFunc(ctx, func() { killGroup(pgid) })
	waitErr := cmd.Wait()
	stop()
	if cmd.ProcessState == nil {
		return nil, fmt.Errorf("wait for git: %w", waitErr)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("git %s: %w", args[0], ctx.Err())
	}
	code, _ := exitInfo(cmd.ProcessState)
	return &gitResult{stdout: string(stdout.buf), stderr: string(stderr.buf), code: code}, nil
}

func notARepo(r *gitResult) bool {
	return r.code != 0 && strings.Contains(r.stderr, "not a git repository")
}

func gitFailure(status int, what string, r *gitResult) error {
	msg := strings.TrimSpace(r.stderr)
	if msg == "" {
		msg = strings.TrimSpace(r.stdout)
	}
	if notARepo(r) {
		return &apiError{status: http.StatusBadRequest, code: agent.CodeNotARepository, field: "path", detail: "path: not a git repository"}
	}
	return &apiError{status: status, code: agent.CodeGitFailed, detail: fmt.Sprintf("%s (exit %d): %s", what, r.code, msg)}
}

func problemPtr(err error) *agent.Problem {
	_, p := problemOf(err)
	return &p
}

func (s *Server) decodePaths(w http.ResponseWriter, r *http.Request) ([]string, error) {
	var req agent.GitPathsRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return nil, err
	}
	if len(req.Paths) == 0 {
		return nil, errBadField("paths", "at least one path is required")
	}
	if len(req.Paths) > maxGitRepos {
		return nil, errBadField("paths", "at most %d paths", maxGitRepos)
	}
	return req.Paths, nil
}

// forEach runs fn for every index with bounded parallelism.
func forEach(n int, fn func(i int)) {
	sem := make(chan struct{}, gitParallel)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}()
	}
	wg.Wait()
}

// gitStatus is POST /git/status: one porcelain v2 call per repo (branch,
// upstream, ahead/behind and changes at once) plus the last commit.
func (s *Server) gitStatus(w http.ResponseWriter, r *http.Request) error {
	paths, err := s.decodePaths(w, r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), gitTimeout)
	defer cancel()
	res := agent.GitStatusResult{Repos: make([]agent.GitRepoStatus, len(paths))}
	forEach(len(paths), func(i int) {
		st, err := s.repoStatus(ctx, paths[i])
		if err != nil {
			st = &agent.GitRepoStatus{Path: paths[i], Error: problemPtr(err)}
		}
		res.Repos[i] = *st
	})
	return writeJSON(w, http.StatusOK, res)
}

func (s *Server) repoStatus(ctx context.Context, path string) (*agent.GitRepoStatus, error) {
	rp, err := s.openRepo("path", path)
	if err != nil {
		return nil, err
	}
	out, err := s.git(ctx, rp, nil, "status", "--porcelain=v2", "--branch", "-z")
	if err != nil {
		return nil, err
	}
	if out.code != 0 {
		return nil, gitFailure(http.StatusInternalServerError, "git status", out)
	}
	st := &agent.GitRepoStatus{Path: rp.path}
	initial := false
	fields := strings.Split(out.stdout, "\x00")
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		switch {
		case f == "":
		case strings.HasPrefix(f, "# branch.oid "):
			initial = strings.TrimPrefix(f, "# branch.oid ") == "(initial)"
		case strings.HasPrefix(f, "# branch.head "):
			if h := strings.TrimPrefix(f, "# branch.head "); h != "(detached)" {
				st.Branch = h
			}
		case strings.HasPrefix(f, "# branch.upstream "):
			st.Upstream = strings.TrimPrefix(f, "# branch.upstream ")
		case strings.HasPrefix(f, "# branch.ab "):
			var a, b int
			if _, err := fmt.Sscanf(strings.TrimPrefix(f, "# branch.ab "), "+%d -%d", &a, &b); err == nil {
				st.Ahead, st.Behind = a, b
			}
		case f[0] == '#':
		case f[0] == '2':
			// A rename carries its original path as the next field.
			st.Changed++
			i++
		case f[0] == '1' || f[0] == 'u' || f[0] == '?':
			st.Changed++
		}
	}
	st.Dirty = st.Changed > 0
	if !initial {
		lg, err := s.git(ctx, rp, nil, "log", "-1", "--format=%H%x00%s")
		if err == nil && lg.code == 0 {
			if h, subj, ok := strings.Cut(strings.TrimRight(lg.stdout, "\n"), "\x00"); ok {
				st.LastCommit = &agent.GitCommitInfo{Hash: h, Subject: subj}
			}
		}
	}
	return st, nil
}

// gitDiff is POST /git/diff: the working tree against HEAD, staged and
// unstaged merged per file (the reference listed a file twice), plus
// untracked files counted by lines.
func (s *Server) gitDiff(w http.ResponseWriter, r *http.Request) error {
	paths, err := s.decodePaths(w, r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), gitTimeout)
	defer cancel()
	res := agent.GitDiffResult{Repos: make([]agent.GitRepoDiff, len(paths))}
	forEach(len(paths), func(i int) {
		d, err := s.repoDiff(ctx, paths[i])
		if err != nil {
			d = &agent.GitRepoDiff{Path: paths[i], Files: []agent.GitFileDiff{}, Error: problemPtr(err)}
		}
		res.Repos[i] = *d
	})
	return writeJSON(w, http.StatusOK, res)
}

func (s *Server) repoDiff(ctx context.Context, path string) (*agent.GitRepoDiff, error) {
	rp, err := s.openRepo("path", path)
	if err != nil {
		return nil, err
	}
	base := "HEAD"
	head, err := s.git(ctx, rp, nil, "rev-parse", "--verify", "-q", "HEAD")
	if err != nil {
		return nil, err
	}
	if head.code != 0 {
		if notARepo(head) {
			return nil, gitFailure(http.StatusBadRequest, "git rev-parse", head)
		}
		// No commit yet: compare with the empty tree of this repo's hash.
		et, err := s.git(ctx, rp, nil, "hash-object", "-t", "tree", "/dev/null")
		if err != nil {
			return nil, err
		}
		if et.code != 0 {
			return nil, gitFailure(http.StatusInternalServerError, "git hash-object", et)
		}
		base = strings.TrimSpace(et.stdout)
	}
	out, err := s.git(ctx, rp, nil, "diff", "--numstat", "-z", "--no-renames", base, "--")
	if err != nil {
		return nil, err
	}
	if out.code != 0 {
		return nil, gitFailure(http.StatusInternalServerError, "git diff", out)
	}
	d := &agent.GitRepoDiff{Path: rp.path, Files: []agent.GitFileDiff{}}
	for _, rec := range strings.Split(out.stdout, "\x00") {
		parts := strings.SplitN(rec, "\t", 3)
		if len(parts) != 3 {
			continue
		}
		fd := agent.GitFileDiff{Path: parts[2]}
		if parts[0] == "-" {
			fd.Binary = true
		} else {
			fd.Added, _ = strconv.Atoi(parts[0])
			fd.Removed, _ = strconv.Atoi(parts[1])
		}
		d.Files = append(d.Files, fd)
	}
	un, err := s.git(ctx, rp, nil, "ls-files", "--others", "--exclude-standard", "-z")
	if err != nil {
		return nil, err
	}
	if un.code == 0 {
		n := 0
		for _, name := range strings.Split(un.stdout, "\x00") {
			if name == "" {
				continue
			}
			if n++; n > maxUntrackedCount {
				break
			}
			lines, binary := countLines(rp.path + "/" + name)
			d.Files = append(d.Files, agent.GitFileDiff{Path: name, Added: lines, Binary: binary, Untracked: true})
		}
	}
	for _, f := range d.Files {
		d.TotalAdded += f.Added
		d.TotalRemoved += f.Removed
	}
	return d, nil
}

// countLines counts the lines of an untracked file like git's numstat
// would (a last line without newline counts), reading a bounded prefix.
func countLines(p string) (int, bool) {
	f, err := os.Open(p)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUntrackedBytes))
	if err != nil {
		return 0, false
	}
	if bytes.IndexByte(b[:min(len(b), untrackedSniffSize)], 0) >= 0 {
		return 0, true
	}
	n := bytes.Count(b, []byte{'\n'})
	if len(b) > 0 && b[len(b)-1] != '\n' {
		n++
	}
	return n, false
}

func currentBranch(ctx context.Context, s *Server, rp *repo) (string, error) {
	br, err := s.git(ctx, rp, nil, "symbolic-ref", "--short", "-q", "HEAD")
	if err != nil {
		return "", err
	}
	if br.code != 0 {
		if notARepo(br) {
			return "", gitFailure(http.StatusBadRequest, "git symbolic-ref", br)
		}
		return "", nil
	}
	return strings.TrimSpace(br.stdout), nil
}

// gitCommit is POST /git/commit: git add -A, then commit.
func (s *Server) gitCommit(w http.ResponseWriter, r *http.Request) error {
	var req agent.GitCommitRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	if strings.TrimSpace(req.Message) == "" {
		return errBadField("message", "is required")
	}
	rp, err := s.openRepo("path", req.Path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), gitTimeout)
	defer cancel()
	add, err := s.git(ctx, rp, nil, "add", "-A")
	if err != nil {
		return err
	}
	if add.code != 0 {
		return gitFailure(http.StatusConflict, "git add", add)
	}
	staged, err := s.git(ctx, rp, nil, "diff", "--cached", "--quiet")
	if err != nil {
		return err
	}
	if staged.code == 0 {
		return errConflict(agent.CodeNothingToDo, "nothing to commit in %s", rp.path)
	}
	env := map[string]string{}
	if req.AuthorName != "" {
		env["GIT_AUTHOR_NAME"], env["GIT_COMMITTER_NAME"] = req.AuthorName, req.AuthorName
	}
	if req.AuthorEmail != "" {
		env["GIT_AUTHOR_EMAIL"], env["GIT_COMMITTER_EMAIL"] = req.AuthorEmail, req.AuthorEmail
	}
	cm, err := s.git(ctx, rp, env, "commit", "-q", "-m", req.Message)
	if err != nil {
		return err
	}
	if cm.code != 0 {
		return gitFailure(http.StatusConflict, "git commit", cm)
	}
	hash, err := s.git(ctx, rp, nil, "rev-parse", "HEAD")
	if err != nil {
		return err
	}
	branch, err := currentBranch(ctx, s, rp)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, agent.GitCommitResult{Path: rp.path, Hash: strings.TrimSpace(hash.stdout), Branch: branch})
}

// validRefArg keeps user input from being read as a git option.
func validRefArg(s string) bool {
	return s != "" && !strings.HasPrefix(s, "-") && !strings.ContainsAny(s, " \t\n\x00")
}

// gitPush is POST /git/push. Credentials never land in git config: a
// caller passes them for this call only through Env (GIT_ASKPASS).
func (s *Server) gitPush(w http.ResponseWriter, r *http.Request) error {
	var req agent.GitPushRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	timeout := gitPushTimeout
	if req.TimeoutMs < 0 || req.TimeoutMs > gitMaxPushTimeout.Milliseconds() {
		return errBadField("timeoutMs", "must be in [0, %d]", gitMaxPushTimeout.Milliseconds())
	} else if req.TimeoutMs > 0 {
		timeout = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	remote := req.Remote
	if remote == "" {
		remote = "origin"
	}
	if !validRefArg(remote) {
		return errBadField("remote", "invalid remote name %q", remote)
	}
	if req.Branch != "" && !validRefArg(req.Branch) {
		return errBadField("branch", "invalid branch name %q", req.Branch)
	}
	rp, err := s.openRepo("path", req.Path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	branch := req.Branch
	if branch == "" {
		if branch, err = currentBranch(ctx, s, rp); err != nil {
			return err
		}
		if branch == "" {
			return errBadField("branch", "HEAD is detached; name the branch to push")
		}
	}
	out, err := s.git(ctx, rp, req.Env, "push", "--set-upstream", remote, branch)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return &apiError{status: http.StatusGatewayTimeout, code: agent.CodeGitFailed, detail: fmt.Sprintf("git push: no answer within %s", timeout)}
		}
		return err
	}
	if out.code != 0 {
		return gitFailure(http.StatusBadGateway, "git push", out)
	}
	return writeJSON(w, http.StatusOK, agent.GitPushResult{Path: rp.path, Remote: remote, Branch: branch, Output: strings.TrimSpace(out.stderr + out.stdout)})
}

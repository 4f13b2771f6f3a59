package sshproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/agent"
	"atelier/internal/auth"
)

const benchBytes = 64 << 20

// upload copies benchBytes into `cat > /dev/null` on a new session and
// returns the elapsed time until the exit status arrived.
func upload(cl *ssh.Client, chunk []byte) (time.Duration, error) {
	s, err := cl.NewSession()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	in, err := s.StdinPipe()
	if err != nil {
		return 0, err
	}
	if err := s.Start("cat > /dev/null"); err != nil {
		return 0, err
	}
	start := time.Now()
	for n := 0; n < benchBytes; n += len(chunk) {
		if _, err := in.Write(chunk); err != nil {
			return 0, err
		}
	}
	in.Close()
	if err := s.Wait(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// download reads benchBytes of `head -c` output and returns the elapsed
// time until the exit status arrived.
func download(cl *ssh.Client) (time.Duration, error) {
	s, err := cl.NewSession()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	out, err := s.StdoutPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := s.Start(fmt.Sprintf("head -c %d /dev/zero", benchBytes)); err != nil {
		return 0, err
	}
	// Large reads: x/crypto sends a window adjustment per read, and
	// io.Discard would read 8 KiB at a time (OpenSSH adjusts per half
	// window).
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, out, make([]byte, 256<<10))
	if err != nil || n != benchBytes {
		return 0, fmt.Errorf("download: %d bytes, %v", n, err)
	}
	if err := s.Wait(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// The transfer benchmark's client runs in a process of its own (the test
// binary again, see TestMain), as a user's ssh does: sharing the proxy's
// Go runtime, its encryption and garbage would be charged to the proxy.
// It connects both ways at start, then runs "up|down proxy|direct" lines
// from stdin and answers each with the elapsed nanoseconds.
const (
	benchClientEnv = "ATELIER_SSHBENCH_CLIENT" // the proxy's address
	benchUserEnv   = "ATELIER_SSHBENCH_USER"   // the sandbox id
	benchKeyEnv    = "ATELIER_SSHBENCH_KEY"    // the client key, PEM
	benchHostEnv   = "ATELIER_SSHBENCH_HOST"   // the proxy's host key, authorized_keys format
	benchAgentEnv  = "ATELIER_SSHBENCH_AGENT"  // the agent's unix socket
)

func benchClientMain() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "ssh bench client:", err)
		return 1
	}
	signer, err := ssh.ParsePrivateKey([]byte(os.Getenv(benchKeyEnv)))
	if err != nil {
		return fail(err)
	}
	host, _, _, _, err := ssh.ParseAuthorizedKey([]byte(os.Getenv(benchHostEnv)))
	if err != nil {
		return fail(err)
	}
	// Both connections read through the same large buffer, as OpenSSH
	// reads in large pieces; x/crypto alone makes a system call per 4 KiB.
	tc, err := net.DialTimeout("tcp", os.Getenv(benchClientEnv), 10*time.Second)
	if err != nil {
		return fail(err)
	}
	pc, pchans, preqs, err := ssh.NewClientConn(readBuffered(tc), tc.RemoteAddr().String(), &ssh.ClientConfig{User: os.Getenv(benchUserEnv),
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: ssh.FixedHostKey(host), Timeout: 10 * time.Second})
	if err != nil {
		return fail(err)
	}
	viaProxy := ssh.NewClient(pc, pchans, preqs)
	defer viaProxy.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := agent.New(agent.UnixDialer(os.Getenv(benchAgentEnv))).DialUpgrade(ctx, agent.SSHPath, agent.SSHProtocol)
	if err != nil {
		return fail(err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(readBuffered(conn), "agent", &ssh.ClientConfig{HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		return fail(err)
	}
	direct := ssh.NewClient(sc, chans, reqs)
	defer direct.Close()
	chunk := bytes.Repeat([]byte("atelier!"), 4096)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		dir, path, _ := strings.Cut(in.Text(), " ")
		cl := direct
		if path == "proxy" {
			cl = viaProxy
		}
		var d time.Duration
		switch dir {
		case "up":
			d, err = upload(cl, chunk)
		case "down":
			d, err = download(cl)
		default:
			err = fmt.Errorf("unknown command %q", in.Text())
		}
		if err != nil {
			return fail(err)
		}
		fmt.Println(d.Nanoseconds())
	}
	return 0
}

// benchClient starts the client process for sandbox id.
func (e *env) benchClient(b *testing.B, id string) (func(cmd string) time.Duration, int) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	local := e.user(b, auth.LocalUserID, 0)
	e.register(b, local.ID, signer, nil)
	sock := e.rt.AgentSocket(id)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchClientEnv+"="+e.addr, benchUserEnv+"="+id, benchKeyEnv+"="+string(pem.EncodeToMemory(block)),
		benchHostEnv+"="+string(ssh.MarshalAuthorizedKey(e.proxy.HostKey())), benchAgentEnv+"="+sock)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("ssh bench client: %v", err)
		}
	})
	out := bufio.NewScanner(stdout)
	return func(c string) time.Duration {
		b.Helper()
		if _, err := fmt.Fprintln(stdin, c); err != nil {
			b.Fatal(err)
		}
		if !out.Scan() {
			b.Fatalf("ssh bench client: no answer to %q: %v", c, errors.Join(out.Err(), io.ErrUnexpectedEOF))
		}
		ns, err := strconv.ParseInt(out.Text(), 10, 64)
		if err != nil {
			b.Fatalf("ssh bench client: %q", out.Text())
		}
		return time.Duration(ns)
	}, cmd.Process.Pid
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func medianF(x []float64) float64 {
	sort.Float64s(x)
	return x[len(x)/2]
}

func mbps(d time.Duration) float64 { return float64(benchBytes) / (1 << 20) / d.Seconds() }

// BenchmarkSSHTransfer compares the transfer rate of 64 MiB into
// `cat > /dev/null` (up) and out of `head -c` (down) through the proxy with
// the agent's SSH server reached directly over the agent transport
// (x-direct = proxy rate / direct rate; target >= 0.9). The client is a
// process of its own (see benchClientMain). Runs alternate so both paths
// see the same machine load, and each ratio is the median of the ratios
// of its rounds.
//
// Here the client, the proxy and the agent share 2 cores, so the rates
// measure the sum of their CPU, the user's client's included. The run
// also measures each process's CPU per GiB: the stages that set the rate
// on a host where they run on cores of their own and the client is
// remote. stage-x-direct is the agent's cost when reached directly over
// the costlier of the proxy and the agent behind it.
func BenchmarkSSHTransfer(b *testing.B) {
	e := newEnv(b, nil)
	local := e.user(b, auth.LocalUserID, 0)
	id := e.sandbox(b, local.ID)
	run, clientPID := e.benchClient(b, id)
	agentPid := agentPID(b, id)
	type stages struct{ client, proxy, agent time.Duration }
	// measure runs cmd and adds each process's CPU time to st.
	measure := func(st *stages, cmd string) time.Duration {
		c0, p0, a0 := procCPU(b, clientPID), procCPU(b, os.Getpid()), procCPU(b, agentPid)
		d := run(cmd)
		st.client += procCPU(b, clientPID) - c0
		st.proxy += procCPU(b, os.Getpid()) - p0
		st.agent += procCPU(b, agentPid) - a0
		return d
	}
	const rounds = 9
	var pu, du, pd, dd []time.Duration
	var ru, rd []float64
	var spu, sdu, spd, sdd stages
	for _, c := range []string{"up proxy", "up direct", "down proxy", "down direct"} {
		run(c) // warm up every path
	}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < rounds; i++ {
			p, d := measure(&spu, "up proxy"), measure(&sdu, "up direct")
			pu, du, ru = append(pu, p), append(du, d), append(ru, float64(d)/float64(p))
			p, d = measure(&spd, "down proxy"), measure(&sdd, "down direct")
			pd, dd, rd = append(pd, p), append(dd, d), append(rd, float64(d)/float64(p))
		}
	}
	b.StopTimer()
	gib := float64(b.N*rounds*benchBytes) / (1 << 30)
	perGiB := func(d time.Duration) float64 { return float64(d.Milliseconds()) / gib }
	for _, dir := range []struct {
		name          string
		proxy, direct []time.Duration
		ratios        []float64
		sp, sd        stages
	}{{"up", pu, du, ru, spu, sdu}, {"down", pd, dd, rd, spd, sdd}} {
		b.ReportMetric(mbps(median(dir.proxy)), dir.name+"-proxy-MiB/s")
		b.ReportMetric(mbps(median(dir.direct)), dir.name+"-direct-MiB/s")
		b.ReportMetric(medianF(dir.ratios), dir.name+"-x-direct")
		b.ReportMetric(perGiB(dir.sp.proxy), dir.name+"-proxy-cpu-ms/GiB")
		b.ReportMetric(perGiB(dir.sp.agent), dir.name+"-agent-behind-proxy-cpu-ms/GiB")
		b.ReportMetric(perGiB(dir.sd.agent), dir.name+"-agent-direct-cpu-ms/GiB")
		b.ReportMetric(perGiB(dir.sp.client), dir.name+"-client-via-proxy-cpu-ms/GiB")
		b.ReportMetric(perGiB(dir.sd.client), dir.name+"-client-direct-cpu-ms/GiB")
		b.ReportMetric(float64(dir.sd.agent)/float64(max(dir.sp.proxy, dir.sp.agent)), dir.name+"-stage-x-direct")
	}
}

// procCPU is the CPU time pid has used (user + system, children not
// included), from /proc in USER_HZ ticks of 10 ms.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// Fields after "(comm) ": state is the first, utime the 12th.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		b.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// BenchmarkSSHLogin measures connect + authenticate + `true` + disconnect
// through the proxy and directly to the agent's SSH server; extra-ms is
// the proxy's added login latency (p50; target <= 30 ms).
func BenchmarkSSHLogin(b *testing.B) {
	e := newEnv(b, nil)
	local := e.user(b, auth.LocalUserID, 0)
	id := e.sandbox(b, local.ID)
	signer, _ := e.key(b, local.ID, nil)
	once := func(cl *ssh.Client) {
		defer cl.Close()
		s, err := cl.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		if err := s.Run("true"); err != nil {
			b.Fatal(err)
		}
	}
	proxied := func() time.Duration {
		t0 := time.Now()
		cl, err := e.dial(id, signer, nil)
		if err != nil {
			b.Fatal(err)
		}
		once(cl)
		return time.Since(t0)
	}
	directly := func() time.Duration {
		t0 := time.Now()
		once(e.dialDirect(b, id))
		return time.Since(t0)
	}
	proxied()
	directly()
	const rounds = 30
	var p, d []time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < rounds; i++ {
			p = append(p, proxied())
			d = append(d, directly())
		}
	}
	b.StopTimer()
	pm, dm := median(p), median(d)
	b.ReportMetric(float64(pm.Microseconds())/1000, "proxy-ms")
	b.ReportMetric(float64(dm.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64((pm-dm).Microseconds())/1000, "extra-ms")
}

package guest

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"

	"atelier/internal/agent"
	"atelier/internal/agentpki"
	"atelier/internal/bootcontract"
	"atelier/internal/image/manifest"
)

const usage = `usage:
  atelier-agent serve [--vsock-port 9998] [--unix PATH] [--file-root DIR ...] [--log-dir DIR]
                      [--config-path PATH] [--sandbox-id ID] [--workdir DIR] [--manage-network]
                      [--terminal-idle 30m] [--etc-dir /etc] [--log-level info]
                      [--virtio-serial-port NAME] [--listen-tls ADDR --tls-dir DIR]
                      [--image-manifest /etc/atelier/image.json] [--state-dir /var/lib/atelier]
  atelier-agent init [--kernel-cmdline=true] [-- serve flags...]
  atelier-agent sftp-server   (SFTP on stdin/stdout; the SSH server runs it as the session's user)
  atelier-agent git-credential [--socket PATH] get   (git's credential helper; asks the host through the agent)
  atelier-agent copy-rootfs DEST   (copies / into DEST, staying on the root file system: fills a new disk)
  atelier-agent version
Run as PID 1 without one of these commands (a VM guest's kernel starts it
with none), it is the guest's init under the boot contract.
`

// commands are the agent's subcommands.
var commands = map[string]bool{
	"serve": true, "init": true, "sftp-server": true, "git-credential": true, "copy-rootfs": true, "version": true, "--version": true,
	"help": true, "-h": true, "--help": true,
}

// Main is the agent's command line; it returns the exit code. The atelier
// binary embeds it as a hidden "atelier agent ..." subcommand for mock
// mode, so args are whatever follows the subcommand.
//
// A VM guest's kernel starts the agent as PID 1 with no arguments (it
// cannot pass a subcommand), under whatever name the image gave it: being
// PID 1 is what makes it the guest's init.
func Main(args []string) int {
	if os.Getpid() == 1 && (len(args) == 0 || !commands[args[0]]) {
		return vmInitMain(args)
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serveMain(args[1:])
	case "init":
		return initMain(args)
	case "sftp-server":
		return sftpServerMain()
	case "git-credential":
		return gitCredentialMain(args[1:])
	case "copy-rootfs":
		return copyRootfsMain(args[1:])
	case "version", "--version":
		fmt.Println(Version)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown command %q\n%s", args[0], usage)
	return 2
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func serveMain(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	vsockPort := fs.Uint("vsock-port", agent.DefaultVsockPort, "vsock port to listen on (0 disables)")
	unixPath := fs.String("unix", "", "unix socket path to listen on")
	var roots multiFlag
	fs.Var(&roots, "file-root", "directory the file API may touch (repeatable; default / as root)")
	logDir := fs.String("log-dir", "/var/log/sandbox", "directory for service and dev command logs")
	configPath := fs.String("config-path", "/etc/sandbox/config.json", "where POST /config is stored")
	sandboxID := fs.String("sandbox-id", os.Getenv("ATELIER_SANDBOX_ID"), "sandbox id reported by /health")
	workDir := fs.String("workdir", "", "default working directory of commands")
	manageNet := fs.Bool("manage-network", false, "let POST /network configure interfaces (VM guests)")
	termIdle := fs.Duration("terminal-idle", 30*time.Minute, "close terminals idle this long without viewers")
	etcDir := fs.String("etc-dir", "/etc", "directory receiving resolv.conf, hostname and hosts")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	vport := fs.String("virtio-serial-port", "", "also serve on the virtio-serial port of this name, if the VMM provides one")
	manifestPath := fs.String("image-manifest", manifest.Path, "image manifest whose services to run (\"\" for none)")
	credSocket := fs.String("git-credential-socket", "", "guest-facing socket of git's credential helper (default beside --config-path)")
	stateDir := fs.String("state-dir", "/var/lib/atelier", "where the desired state of services is kept (\"\" for memory only)")
	listenTLS := fs.String("listen-tls", "", "also serve over TCP with mutual TLS on this address (a pod's network; needs --tls-dir)")
	tlsDir := fs.String("tls-dir", "", "directory holding ca.crt, tls.crt and tls.key for --listen-tls")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	base, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := base.With("sandbox_id", *sandboxID)
	explicitVsock := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "vsock-port" {
			explicitVsock = true
		}
	})
	// Both listeners when both are asked for; a bare --unix (mock mode,
	// possibly on a host that has /dev/vsock) means unix only.
	useVsock := *vsockPort > 0 && (explicitVsock || *unixPath == "")
	if useVsock {
		if _, err := os.Stat("/dev/vsock"); err != nil {
			log.Warn("no /dev/vsock; not listening on vsock", "vsock_port", *vsockPort)
			useVsock = false
		}
	}
	if (*listenTLS == "") != (*tlsDir == "") {
		log.Error("--listen-tls and --tls-dir go together")
		return 2
	}
	var tlsLn net.Listener
	if *listenTLS != "" {
		// Never plain TCP: anything on the network could reach the agent.
		cfg, err := agentpki.ServerConfig(*tlsDir)
		if err != nil {
			log.Error("agent TLS", "err", err)
			return 1
		}
		ln, err := net.Listen("tcp", *listenTLS)
		if err != nil {
			log.Error("listen", "addr", *listenTLS, "err", err)
			return 1
		}
		tlsLn = tls.NewListener(ln, cfg)
		log.Info("agent listening", "tls", ln.Addr().String())
	}
	if !useVsock && *unixPath == "" && tlsLn == nil {
		log.Error("nothing to listen on: give --unix or --listen-tls, or run where /dev/vsock exists")
		return 1
	}
	if os.Getpid() == 1 {
		log.Warn("serve runs as PID 1: orphans will not be reaped; use `atelier-agent init` as PID 1")
	}

	srv := NewServer(Options{
		SandboxID:     *sandboxID,
		FileRoots:     roots,
		WorkDir:       *workDir,
		LogDir:        *logDir,
		ConfigPath:    *configPath,
		EtcDir:        *etcDir,
		ManageNetwork: *manageNet,
		TerminalIdle:  *termIdle,
		ManifestPath:  *manifestPath,
		StateDir:      *stateDir,
		CredSocket:    *credSocket,
		Logger:        base,
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The agent's stdout is the host's log keeper pipe: should the keeper
	// die, a log line must not kill the agent (Go exits on SIGPIPE from a
	// write to fd 1 or 2 unless the signal is handled). Handled, not
	// ignored, so the commands it starts get the default SIGPIPE back.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	go func() {
		for range sigpipe {
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	n := 0
	if useVsock {
		ln, err := vsock.Listen(uint32(*vsockPort), nil)
		if err != nil {
			log.Error("listen on vsock", "vsock_port", *vsockPort, "err", err)
			return 1
		}
		log.Info("agent listening", "vsock_port", *vsockPort)
		markListening(log)
		n++
		go func() { errc <- srv.Serve(ctx, ln) }()
	}
	if *unixPath != "" {
		n++
		go func() { errc <- srv.ServeUnix(ctx, *unixPath) }()
	}
	if tlsLn != nil {
		n++
		go func() { errc <- srv.Serve(ctx, tlsLn) }()
	}
	go func() {
		if err := srv.ServeCredSocket(ctx, srv.opts.CredSocket); err != nil {
			log.Warn("git credential socket", "err", err)
		}
	}()
	if *vport != "" {
		// Optional and possibly never there: it does not count as a
		// listener, and its absence is the normal case (Firecracker).
		go serveVirtioPort(ctx, srv, *vport, log)
	}
	// The SSH server has no listener of its own: the manager's SSH proxy
	// reaches it through GET /ssh on the listeners above (see ssh.go).
	code := 0
	for range n {
		if err := <-errc; err != nil {
			log.Error("agent listener failed", "err", err)
			code = 1
			cancel()
		}
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("agent shutdown", "err", err)
	}
	return code
}

// markListening records, in a VM guest booted under the contract, when
// the agent's listener was bound (see bootcontract.AgentListeningFile).
func markListening(log *slog.Logger) {
	if st, err := os.Stat(bootcontract.RunDir); err == nil && st.IsDir() {
		recordBootTime(log, bootcontract.AgentListeningFile, boottime())
	}
}

// vmInitMain is PID 1 of a VM guest: no flags (the kernel passes none), the
// boot contract read from /proc/cmdline, the log also written to
// bootcontract.InitLog.
func vmInitMain(args []string) int {
	mountMissing(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	var w io.Writer = os.Stderr
	logFile, err := openInitLog()
	if err == nil {
		w = io.MultiWriter(os.Stderr, logFile)
	}
	log := slog.New(slog.NewJSONHandler(w, nil)).With("component", "init")
	if err != nil {
		log.Warn("open init log", "path", bootcontract.InitLog, "err", err)
	}
	if len(args) > 0 {
		log.Warn("ignoring init arguments", "args", args)
	}
	// The kernel passes the init= path as argv[0].
	exe := os.Args[0]
	if !filepath.IsAbs(exe) {
		if exe, err = os.Executable(); err != nil {
			log.Error("find own executable", "err", err)
			return 1
		}
	}
	o := InitOptions{ServeArgv: []string{exe, "serve"}, KernelCmdline: true, Logger: log}
	if logFile != nil {
		o.LogFile = logFile
	}
	if err := RunInit(context.Background(), o); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("init failed", "err", err)
		return 1
	}
	return 0
}

func initMain(args []string) int {
	// args[0] is "init"; serve flags may follow "--".
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	cmdline := fs.Bool("kernel-cmdline", true, "apply ip=, hostname and atelier.* settings from /proc/cmdline")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	log, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log = log.With("component", "init")
	exe, err := os.Executable()
	if err != nil {
		log.Error("find own executable", "err", err)
		return 1
	}
	serve := append([]string{exe}, cmdPrefix(args)...)
	serve = append(serve, "serve")
	serve = append(serve, fs.Args()...)
	if err := RunInit(context.Background(), InitOptions{ServeArgv: serve, KernelCmdline: *cmdline, Logger: log}); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("init failed", "err", err)
		return 1
	}
	return 0
}

// cmdPrefix returns the words between the program name and Main's args
// (["agent"] when embedded as "atelier agent init"), so init re-executes
// the same binary the same way for serve.
func cmdPrefix(args []string) []string {
	all := os.Args[1:]
	if len(args) > len(all) {
		return nil
	}
	off := len(all) - len(args)
	for i, a := range args {
		if all[off+i] != a {
			return nil
		}
	}
	return append([]string(nil), all[:off]...)
}

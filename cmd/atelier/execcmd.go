package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"atelier/internal/agent"
)

// stdinOf is the command's standard input; tests replace it.
var stdinOf = func(cmd *cobra.Command) io.Reader { return cmd.InOrStdin() }

// signalNames are the signals the CLI forwards to a remote command.
var signalNames = map[os.Signal]string{os.Interrupt: "INT", syscall.SIGTERM: "TERM", syscall.SIGHUP: "HUP", syscall.SIGQUIT: "QUIT"}

func newExecCmd(g *globals) *cobra.Command {
	var (
		workdir, user string
		env           []string
		timeout       time.Duration
		interactive   bool
	)
	cmd := &cobra.Command{
		Use:   "exec ID|NAME [flags] -- COMMAND [ARG...]",
		Short: "Run a command in a sandbox, streaming its output; exit with its status",
		Long: "Run a command in a sandbox (as is, no shell: use -- sh -c '...' for one) and stream its stdout and\n" +
			"stderr. The CLI exits with the command's status (128+n when signal n ended it). Standard input is\n" +
			"passed when it is not a terminal (a pipe, a file) or with -i; Ctrl-C interrupts the command (the\n" +
			"third kills it).\n" +
			"For an interactive terminal use atelier sandbox shell.",
		Example: "  atelier sandbox exec demo -- ls -la\n" +
			"  echo hello | atelier sandbox exec demo -- cat\n" +
			"  atelier sandbox exec demo -w /tmp -e DEBUG=1 -- sh -c 'make test'",
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return errors.New("put the command after --: atelier sandbox exec ID|NAME -- COMMAND [ARG...]")
			}
			envMap := map[string]string{}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--env %q: expected KEY=VALUE", kv)
				}
				envMap[k] = v
			}
			if timeout < 0 || timeout > agent.MaxExecTimeout {
				return fmt.Errorf("--timeout %s: must be between 0 and %s", timeout, agent.MaxExecTimeout)
			}
			if timeout == 0 {
				timeout = agent.MaxExecTimeout
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			v, err := resolve(ctx, c, args[0])
			if err != nil {
				return err
			}
			in := stdinOf(cmd)
			if !interactive {
				if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					in = nil
				}
			}
			req := agent.ExecRequest{Argv: args[1:], Env: envMap, Cwd: workdir, User: user,
				TimeoutMs: timeout.Milliseconds(), StdinStream: in != nil}
			conn, err := c.DialAgent(ctx, v.ID, "/exec/stream")
			if err != nil {
				return err
			}
			defer conn.CloseNow()
			code, err := streamExec(ctx, conn, req, in, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&workdir, "workdir", "w", "", "working directory (default the user's home)")
	f.StringVarP(&user, "user", "u", "", "user name or uid to run as (default the agent's user)")
	f.StringArrayVarP(&env, "env", "e", nil, "KEY=VALUE added to the environment (repeatable)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (default and most: 1h)")
	f.BoolVarP(&interactive, "interactive", "i", false, "pass standard input even when it is a terminal")
	return cmd
}

// streamExec runs req over an exec WebSocket: stdin (when in is not nil)
// goes up as binary messages, output comes down tagged stdout or stderr,
// and the final event gives the exit status. Interrupts are forwarded to
// the command's process group.
func streamExec(ctx context.Context, conn *websocket.Conn, req agent.ExecRequest, in io.Reader, stdout, stderr io.Writer) (int, error) {
	b, _ := json.Marshal(req)
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		return 0, fmt.Errorf("start command: %w", err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		interrupts := 0
		for {
			select {
			case <-wctx.Done():
				return
			case s := <-sigs:
				name := signalNames[s]
				if s == os.Interrupt {
					// A command that ignores Ctrl-C still ends at the third.
					if interrupts++; interrupts >= 3 {
						name = "KILL"
					}
				}
				m, _ := json.Marshal(agent.StreamControl{Type: agent.StreamKill, Signal: name})
				_ = conn.Write(wctx, websocket.MessageText, m)
			}
		}
	}()
	if in != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := in.Read(buf)
				if n > 0 {
					if conn.Write(wctx, websocket.MessageBinary, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					_ = conn.Write(wctx, websocket.MessageText, []byte(`{"type":"closeStdin"}`))
					return
				}
			}
		}()
	}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return 0, fmt.Errorf("the connection to the sandbox ended before the command did: %w", err)
		}
		if typ == websocket.MessageBinary {
			if len(data) == 0 {
				continue
			}
			w := stdout
			if data[0] == agent.StreamStderr {
				w = stderr
			}
			if _, err := w.Write(data[1:]); err != nil {
				return 0, err
			}
			continue
		}
		var ev agent.StreamEvent
		if json.Unmarshal(data, &ev) != nil {
			continue
		}
		switch ev.Type {
		case agent.StreamExit:
			conn.Close(websocket.StatusNormalClosure, "")
			if ev.TimedOut {
				fmt.Fprintf(stderr, "atelier: the command was killed at its timeout (%s)\n", time.Duration(req.TimeoutMs)*time.Millisecond)
			}
			return ev.ExitCode, nil
		case agent.StreamError:
			if ev.Code == agent.CodeStartFailed || ev.Code == agent.CodeBadRequest && strings.HasPrefix(ev.Detail, "argv: ") {
				// The shell's convention for a command that cannot run.
				fmt.Fprintf(stderr, "atelier: cannot run %s: %s\n", req.Argv[0], strings.TrimPrefix(ev.Detail, "argv: "))
				return 127, nil
			}
			for field, flag := range map[string]string{"cwd": "--workdir", "user": "--user", "env": "--env", "timeoutMs": "--timeout"} {
				if rest, ok := strings.CutPrefix(ev.Detail, field+": "); ok {
					return 0, errors.New(flag + ": " + rest)
				}
			}
			return 0, errors.New(ev.Detail)
		}
	}
}

func newShellCmd(g *globals) *cobra.Command {
	var user, workdir string
	cmd := &cobra.Command{
		Use:   "shell ID|NAME [-- COMMAND [ARG...]]",
		Short: "Open an interactive terminal in a sandbox",
		Long: "Open a terminal (a PTY in the sandbox, over a WebSocket) running your login shell, or COMMAND.\n" +
			"The window size follows yours; the CLI exits with the shell's status. When standard input is not\n" +
			"a terminal, what it holds is typed in, then Ctrl-D.",
		Example:           "  atelier sandbox shell demo\n  atelier sandbox shell demo -- htop",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: g.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n := cmd.ArgsLenAtDash(); len(args) > 1 && n != 1 {
				return errors.New("put the command after --: atelier sandbox shell ID|NAME -- COMMAND [ARG...]")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			v, err := resolve(ctx, c, args[0])
			if err != nil {
				return err
			}
			in := stdinOf(cmd)
			out := cmd.OutOrStdout()
			inFile, _ := in.(*os.File)
			tty := inFile != nil && term.IsTerminal(int(inFile.Fd()))
			req := agent.TerminalRequest{Cmd: args[1:], User: user, Cwd: workdir, Title: "atelier sandbox shell"}
			if tty {
				if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
					req.Cols, req.Rows = w, h
				}
				if t := os.Getenv("TERM"); t != "" {
					req.Env = map[string]string{"TERM": t}
				}
			}
			var ti agent.TerminalInfo
			if err := c.Agent(ctx, "POST", v.ID, "/terminals", req, &ti); err != nil {
				return err
			}
			// The session outlives a lost connection only until the CLI cleans up.
			defer func() { _ = c.Agent(context.WithoutCancel(ctx), "DELETE", v.ID, "/terminals/"+ti.ID, nil, nil) }()
			conn, err := c.DialAgent(ctx, v.ID, "/terminals/"+ti.ID+"/attach")
			if err != nil {
				return err
			}
			defer conn.CloseNow()
			if tty {
				old, err := term.MakeRaw(int(inFile.Fd()))
				if err != nil {
					return fmt.Errorf("raw terminal: %w", err)
				}
				defer func() { _ = term.Restore(int(inFile.Fd()), old) }()
			}
			code, err := attachTerminal(ctx, conn, in, out, inFile, tty)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "user", "u", "", "user to run as (default the agent's user)")
	cmd.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory (default the user's home)")
	return cmd
}

// attachTerminal copies the user's keys to the terminal and its output
// back until the program exits, resizing it with the user's window.
func attachTerminal(ctx context.Context, conn *websocket.Conn, in io.Reader, out io.Writer, inFile *os.File, tty bool) (int, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if tty {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-wctx.Done():
					return
				case <-winch:
					if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
						_ = agent.SendResize(wctx, conn, w, h)
					}
				}
			}
		}()
	}
	// A shell may flush its terminal's input while it sets the terminal up;
	// typed keys come later, but piped input would be lost. So piped input
	// waits for the first output (the prompt), or a second.
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		if !tty {
			select {
			case <-ready:
			case <-time.After(time.Second):
			case <-wctx.Done():
				return
			}
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if conn.Write(wctx, websocket.MessageBinary, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				if !tty {
					// A script's input ends: end the shell's input too.
					_ = conn.Write(wctx, websocket.MessageBinary, []byte{4})
				}
				return
			}
		}
	}()
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				return 0, nil
			}
			return 0, fmt.Errorf("the terminal's connection ended: %w", err)
		}
		if typ == websocket.MessageBinary {
			readyOnce.Do(func() { close(ready) })
			if _, err := out.Write(data); err != nil {
				return 0, err
			}
			continue
		}
		var m agent.TerminalControl
		if json.Unmarshal(data, &m) == nil && m.Type == agent.TerminalExit && m.ExitCode != nil {
			return *m.ExitCode, nil
		}
	}
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Exit codes of `netcheck dial`, read from the Pod's status by the
// kubernetes runtime's policy check. Neither is 1 or 2 (a failure, a usage
// error, another agent's "unknown command"), so nothing else reads as
// either answer.
const (
	netcheckConnected = 10
	netcheckBlocked   = 11
)

const netcheckUsage = `usage:
  atelier-agent netcheck listen ADDR [--for 10m]   (accepts TCP connections and closes them)
  atelier-agent netcheck dial ADDR [--timeout 3s] [--attempts 5] [--interval 1s]
      exits 10 when a connection was made, 11 when none was
`

// netcheckMain proves by traffic whether the cluster keeps Pods apart: the
// kubernetes runtime runs a listener and a dialer, each under a sandbox's
// NetworkPolicy, from the image's own agent (no tool of the image needed).
func netcheckMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprint(os.Stderr, netcheckUsage)
		return 2
	}
	mode, addr := args[0], args[1]
	fs := flag.NewFlagSet("netcheck "+mode, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	life := fs.Duration("for", 10*time.Minute, "listen: exit after this long (a Pod left behind ends)")
	timeout := fs.Duration("timeout", 3*time.Second, "dial: time allowed to one attempt")
	attempts := fs.Int("attempts", 5, "dial: attempts before giving up")
	interval := fs.Duration("interval", time.Second, "dial: pause between attempts")
	if err := fs.Parse(args[2:]); err != nil || fs.NArg() > 0 {
		fmt.Fprint(os.Stderr, netcheckUsage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch mode {
	case "listen":
		ctx, cancel := context.WithTimeout(ctx, *life)
		defer cancel()
		if err := netcheckListen(ctx, addr, nil); err != nil {
			fmt.Fprintln(os.Stderr, "netcheck listen:", err)
			return 1
		}
		return 0
	case "dial":
		if *attempts < 1 || *timeout <= 0 {
			fmt.Fprint(os.Stderr, netcheckUsage)
			return 2
		}
		err := netcheckDial(ctx, addr, *attempts, *timeout, *interval)
		if err != nil {
			fmt.Println("netcheck dial", addr+":", "no connection:", err)
			return netcheckBlocked
		}
		fmt.Println("netcheck dial", addr+":", "connected")
		return netcheckConnected
	}
	fmt.Fprint(os.Stderr, netcheckUsage)
	return 2
}

// netcheckListen accepts and closes connections until ctx ends; ready, if
// set, is sent the bound address.
func netcheckListen(ctx context.Context, addr string, ready chan<- net.Addr) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	if ready != nil {
		ready <- ln.Addr()
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		_, _ = io.WriteString(c, "atelier-netcheck\n")
		c.Close()
	}
}

// netcheckDial tries addr up to attempts times: any connection made is the
// answer (a listener still starting refuses the first tries), and only
// when every attempt fails is the path called blocked.
func netcheckDial(ctx context.Context, addr string, attempts int, timeout, interval time.Duration) error {
	var last error
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(last, ctx.Err())
			case <-time.After(interval):
			}
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		c, err := (&net.Dialer{}).DialContext(actx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
	}
	return last
}

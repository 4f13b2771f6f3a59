// Command openapigen writes the manager's OpenAPI document, as GET
// /openapi.json serves it, for the web build: the dashboard's API types are
// generated from it (openapi-typescript), so a field renamed in Go fails the
// app's type check instead of the page.
//
//	go run ./internal/dashboard/openapigen -o web/src/api/openapi.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"atelier/internal/config"
	"atelier/internal/server"
)

func main() {
	out := flag.String("o", "-", "output file (- for stdout)")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "openapigen:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	dir, err := os.MkdirTemp("", "atelier-openapi")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	srv, err := server.New(context.Background(), cfg, server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer srv.Store.Close()
	b, err := json.MarshalIndent(srv.API.API().OpenAPI(), "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if out == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(out, b, 0o644)
}

// Command fakeatelier is a new atelier that fails after installing: its
// migration adds a schema version no real binary knows (so the old manager
// cannot start on the migrated database unless update restores it), and
// its manager runs but never answers.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"atelier/internal/config"
)

func main() {
	if len(os.Args) < 2 {
		os.Exit(2)
	}
	switch os.Args[1] {
	case "version":
		fmt.Println("v3-broken")
	case "migrate":
		if len(os.Args) < 4 || os.Args[2] != "--config" {
			os.Exit(2)
		}
		cfg, err := config.Load(config.Options{File: os.Args[3]})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		db, err := sql.Open("sqlite", filepath.Join(cfg.Server.DataDir, "atelier.db"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer db.Close()
		if _, err := db.ExecContext(context.Background(), `INSERT INTO schema_migrations (version, applied_at) VALUES (999, ?)`, time.Now().Format(time.RFC3339)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("migrated to 999")
	case "serve":
		select {}
	default:
		os.Exit(2)
	}
}

// Command testsummary runs `go test -json` with the given arguments and
// prints a summary (see package testsummary); `make test` uses it. It
// exits 1 when a test or a build failed, or go test itself did.
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"

	"atelier/internal/testsummary"
)

func main() {
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	fmt.Println("testing every package: passing tests print nothing, each skipped test prints its reason.")
	fmt.Println("A cold build (empty Go cache) compiles Caddy and the rest first and takes several minutes.")
	cmd := exec.Command(goBin, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
	done := make(chan *testsummary.Result)
	go func() { done <- testsummary.Summarize(pr, os.Stdout) }()
	werr := cmd.Wait()
	pw.Close()
	r := <-done
	fmt.Println()
	if skips := r.SortedSkips(); len(skips) > 0 {
		fmt.Println("skipped:")
		for _, s := range skips {
			fmt.Println("  " + s)
		}
	}
	fmt.Println(r.Totals())
	if werr != nil || !r.OK() {
		if werr != nil && r.OK() {
			fmt.Fprintln(os.Stderr, "go test:", werr)
		}
		os.Exit(1)
	}
}

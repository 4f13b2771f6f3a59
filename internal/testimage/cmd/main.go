// Command cmd builds the minimal test image (`make test-image`):
//
//	go run ./internal/testimage/cmd -o images/test.ext4 -agent bin/atelier-agent
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"atelier/internal/testimage"
)

func main() {
	out := flag.String("o", "images/test.ext4", "output image path")
	agent := flag.String("agent", "bin/atelier-agent", "statically linked atelier-agent binary to install as "+testimage.AgentPath)
	size := flag.Int("size", testimage.DefaultSizeMB, "image size in MB")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := testimage.Build(ctx, *out, *agent, *size); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(*out)
}

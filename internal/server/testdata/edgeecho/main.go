// Command edgeecho is the guest dev server of the edge's end-to-end test:
// it answers every request with the port it was served on, the Host, the
// path and every request header, and echoes WebSocket messages at /ws.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"

	"github.com/coder/websocket"
)

func main() {
	addrs := flag.String("addr", ":3000", "comma-separated listen addresses")
	flag.Parse()
	for _, a := range strings.Split(*addrs, ",") {
		l, err := net.Listen("tcp", a)
		if err != nil {
			log.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		go func() { log.Fatal(http.Serve(l, handler(port))) }()
	}
	select {}
}

func handler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
					return
				}
			}
		}
		var lines []string
		for k, vs := range r.Header {
			for _, v := range vs {
				lines = append(lines, k+": "+v)
			}
		}
		sort.Strings(lines)
		fmt.Fprintf(w, "port=%d host=%s path=%s\n%s\n", port, r.Host, r.URL.RequestURI(), strings.Join(lines, "\n"))
	})
}

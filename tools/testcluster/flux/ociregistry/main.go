// Command ociregistry serves an in-memory OCI distribution registry for pbsync's tests:
// github.com/google/go-containerregistry/pkg/registry, the registry Flux's own tests push
// their artifacts to. Nothing is stored on disk; everything is gone when it exits.
//
// It listens on -addr (default 127.0.0.1:0, a free loopback port) and prints the address it
// listens on (host:port) as the first line on stdout, so a caller that started it on port 0
// learns where it is. Requests are logged to stderr with -v.
//
// Built and cached by `scripts/testcluster build`; see tools/testcluster/README.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (host:port; port 0 picks a free one)")
	verbose := flag.Bool("v", false, "log every request to stderr")
	flag.Parse()

	logs := log.New(io.Discard, "", 0)
	if *verbose {
		logs = log.New(os.Stderr, "ociregistry: ", log.LstdFlags)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ociregistry: %v\n", err)
		os.Exit(1)
	}
	// The one line on stdout: where to find us.
	fmt.Println(ln.Addr().String())

	srv := &http.Server{
		Handler:           registry.New(registry.Logger(logs), registry.WithReferrersSupport(true)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "ociregistry: %v\n", err)
		os.Exit(1)
	}
}

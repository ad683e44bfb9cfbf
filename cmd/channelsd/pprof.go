package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
)

// servePprof serves the runtime profiles on their own listener, apart from
// the public mux, so that they are never exposed by accident with it.
func servePprof(addr string, logger *slog.Logger) {
	logger.Info("channelsd: pprof listening", "addr", addr)
	if err := http.ListenAndServe(addr, pprofMux()); err != nil {
		logger.Error("channelsd: pprof server failed", "err", err)
	}
}

// pprofMux serves the profiles but not /debug/pprof/cmdline: the command
// line may hold secrets (--api-key, --token-secret), and a heap profile
// says enough about the process without it.
func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/cmdline", http.NotFound)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// loopbackAddr accepts a listen address only on loopback: the profiles
// show the process's memory (heap profiles hold strings), so they must
// never reach the network.
func loopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return errors.New("must be a loopback address (127.0.0.1:6060, [::1]:6060 or localhost:6060): the profiles must not reach the network")
}

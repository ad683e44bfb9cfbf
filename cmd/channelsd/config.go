package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/channelsd/channelsd/cmd/channelsd/app"
)

// checkConfigCommand is `channelsd --check-config FILE`: it loads FILE as
// the node would and says whether it is valid.
func checkConfigCommand(args []string, stdout io.Writer) error {
	var path string
	switch {
	case len(args) == 2:
		path = args[1]
	case len(args) == 1 && strings.HasPrefix(args[0], "--check-config="):
		path = strings.TrimPrefix(args[0], "--check-config=")
	}
	if path == "" {
		return errors.New("usage: channelsd --check-config FILE")
	}
	cfg, err := app.LoadConfig(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok, %d channels\n", path, len(cfg.Channels))
	return nil
}

// printDefaultConfigCommand is `channelsd --print-default-config`: the
// configuration the node serves without --config, to start a file from.
func printDefaultConfigCommand(stdout io.Writer) error {
	_, err := stdout.Write(app.DefaultConfig)
	return err
}

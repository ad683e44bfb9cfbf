package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/channelsd/channelsd/channels/auth"
)

// tokenCommand runs `channelsd token --sub S [--topics P1,P2] [--ttl D]`:
// it prints a socket token signed with the node's secret
// (CHANNELS_TOKEN_SECRET or --token-secret), for testing and for scripts.
// Applications mint their own tokens with any HS256 JWT library.
func tokenCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("channelsd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var secret, sub, topics string
	var ttl time.Duration
	env := envDefaults{fs: fs}
	env.str(&secret, "token-secret", "CHANNELS_TOKEN_SECRET", "", "the secret tokens are signed with, as the node has it")
	fs.StringVar(&sub, "sub", "", "the user: the socket is named user:<sub> (required)")
	fs.StringVar(&topics, "topics", "", "comma-separated topic patterns the socket may join, exact or ending in '*' (e.g. 'private:team-1,room:*'); empty: no topics claim, so any public topic and no private one")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: channelsd token --sub S [--topics P1,P2] [--ttl D] [--token-secret K]\n\n"+
			"Prints a socket token (an HS256 JWT with the claims sub, exp, iat and topics) signed\n"+
			"with the node's secret. Clients pass it as the connect parameter token or as phoenix.js's\n"+
			"authToken.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := env.err(); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case secret == "":
		return errors.New("no secret: set CHANNELS_TOKEN_SECRET or --token-secret")
	case sub == "":
		return errors.New("--sub is required")
	case ttl <= 0:
		return fmt.Errorf("--ttl %s: must be positive", ttl)
	}
	v, err := auth.NewVerifier(secret, "")
	if err != nil {
		return err
	}
	var patterns []string
	if topics != "" {
		patterns = splitList(topics)
		if patterns == nil {
			patterns = []string{} // --topics ',': a claim that allows nothing
		}
	}
	token, err := v.Sign(sub, patterns, ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, token)
	return err
}

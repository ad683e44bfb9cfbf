package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

// envDefaults registers flags whose defaults come from environment
// variables, so that containers configure channelsd without a command line
// and --help shows both names.
type envDefaults struct {
	fs   *flag.FlagSet
	errs []error
}

func (e *envDefaults) lookup(env string) (string, bool) {
	v, ok := os.LookupEnv(env)
	return v, ok && v != ""
}

func (e *envDefaults) usage(env, text string) string {
	return fmt.Sprintf("%s (env %s)", text, env)
}

func (e *envDefaults) bad(env, v string, err error) {
	e.errs = append(e.errs, fmt.Errorf("environment %s=%q: %w", env, v, err))
}

func (e *envDefaults) str(p *string, name, env, def, text string) {
	if v, ok := e.lookup(env); ok {
		def = v
	}
	e.fs.StringVar(p, name, def, e.usage(env, text))
}

func (e *envDefaults) bool(p *bool, name, env string, def bool, text string) {
	if v, ok := e.lookup(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = b
	}
	e.fs.BoolVar(p, name, def, e.usage(env, text))
}

func (e *envDefaults) int(p *int, name, env string, def int, text string) {
	if v, ok := e.lookup(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = n
	}
	e.fs.IntVar(p, name, def, e.usage(env, text))
}

func (e *envDefaults) int64(p *int64, name, env string, def int64, text string) {
	if v, ok := e.lookup(env); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			e.bad(env, v, err)
		}
		def = n
	}
	e.fs.Int64Var(p, name, def, e.usage(env, text))
}

func (e *envDefaults) duration(p *time.Duration, name, env string, def time.Duration, text string) {
	if v, ok := e.lookup(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = d
	}
	e.fs.DurationVar(p, name, def, e.usage(env, text))
}

func (e *envDefaults) err() error { return errors.Join(e.errs...) }

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

// fromEnv returns env's value parsed by parse, or def when env is unset
// or empty; a value that does not parse is recorded as an error.
func fromEnv[T any](e *envDefaults, env string, def T, parse func(string) (T, error)) T {
	v, ok := e.lookup(env)
	if !ok {
		return def
	}
	x, err := parse(v)
	if err != nil {
		e.bad(env, v, err)
		return def
	}
	return x
}

func (e *envDefaults) bool(p *bool, name, env string, def bool, text string) {
	e.fs.BoolVar(p, name, fromEnv(e, env, def, strconv.ParseBool), e.usage(env, text))
}

func (e *envDefaults) int(p *int, name, env string, def int, text string) {
	e.fs.IntVar(p, name, fromEnv(e, env, def, strconv.Atoi), e.usage(env, text))
}

func (e *envDefaults) int64(p *int64, name, env string, def int64, text string) {
	parse := func(v string) (int64, error) { return strconv.ParseInt(v, 10, 64) }
	e.fs.Int64Var(p, name, fromEnv(e, env, def, parse), e.usage(env, text))
}

func (e *envDefaults) float(p *float64, name, env string, def float64, text string) {
	parse := func(v string) (float64, error) { return strconv.ParseFloat(v, 64) }
	e.fs.Float64Var(p, name, fromEnv(e, env, def, parse), e.usage(env, text))
}

func (e *envDefaults) duration(p *time.Duration, name, env string, def time.Duration, text string) {
	e.fs.DurationVar(p, name, fromEnv(e, env, def, time.ParseDuration), e.usage(env, text))
}

func (e *envDefaults) err() error { return errors.Join(e.errs...) }

// rateLimitFlag turns --max-messages-per-second into node.Config's
// spelling: the flag's 0 has always turned the rate limit off, where the
// library's zero value is the default rate and negative turns it off.
func rateLimitFlag(perSecond float64) float64 {
	if perSecond == 0 {
		return -1
	}
	return perSecond
}

package main

import (
	"io"
	"testing"
)

func TestMaxRefLengthFlag(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.maxRefLength != 64 {
		t.Fatalf("default --max-ref-length %d, want 64", o.maxRefLength)
	}
	t.Setenv("CHANNELS_MAX_REF_LENGTH", "-1")
	if o, err = parseFlags(nil, io.Discard); err != nil || o.maxRefLength != -1 {
		t.Fatalf("from the environment: %v, %v", o.maxRefLength, err)
	}
}

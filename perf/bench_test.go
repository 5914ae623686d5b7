package perf

import (
	"errors"
	"testing"
)

func TestBenchTargetAndQuoting(t *testing.T) {
	var cfg Config
	if _, err := (Target{Conns: 4}).Open(&cfg); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("a target naming nothing: %v", err)
	}
	if got, want := ShellQuote([]string{"--suite", "full", "--variant", "--gather 0", "it's"}),
		`--suite full --variant '--gather 0' 'it'\''s'`; got != want {
		t.Fatalf("quoted: %s\nwant    %s", got, want)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestDropEmptyFields: fields whose value is "" are left out wherever
// they stand (first, middle, last, several in a row), the rest of the
// event is unchanged and still JSON, and a value holding `"k":""` as
// text is not touched.
func TestDropEmptyFields(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(dropEmpty{&buf})
	log.Info().Str("a", "").Str("map", "").Str("dev", "d0").Str("b", "").Str("c", "").Int("n", 3).Str("z", "").Msg(`text ,"k":"" stays`)
	log.Log().Str("only", "").Send()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines: %q", len(lines), buf.String())
	}
	want := `{"level":"info","dev":"d0","n":3,"message":"text ,\"k\":\"\" stays"}`
	if lines[0] != want {
		t.Errorf("got  %s\nwant %s", lines[0], want)
	}
	if lines[1] != `{}` {
		t.Errorf("an event of one empty field: got %s, want {}", lines[1])
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("%s: not JSON: %v", l, err)
		}
	}
}

// TestLogFormat: --log-format json writes JSON, console the console
// format (not JSON), auto JSON when the output is no terminal (a file
// here), and another value is refused.
func TestLogFormat(t *testing.T) {
	for _, tc := range []struct {
		format string
		json   bool
	}{{"json", true}, {"console", false}, {"auto", true}} {
		f, err := os.CreateTemp(t.TempDir(), "log")
		if err != nil {
			t.Fatal(err)
		}
		w, err := logWriter(tc.format, f)
		if err != nil {
			t.Fatal(err)
		}
		lg := zerolog.New(w)
		lg.Info().Str("map", "").Str("dev", "d0").Msg("hello")
		f.Close()
		b, _ := os.ReadFile(f.Name())
		out := strings.TrimSpace(string(b))
		isJSON := json.Valid([]byte(out))
		if isJSON != tc.json {
			t.Errorf("%s: JSON %v, want %v: %q", tc.format, isJSON, tc.json, out)
		}
		if strings.Contains(out, "map") {
			t.Errorf("%s: the empty field is there: %q", tc.format, out)
		}
		if !strings.Contains(out, "d0") || !strings.Contains(out, "hello") {
			t.Errorf("%s: fields lost: %q", tc.format, out)
		}
	}
	if _, err := logWriter("xml", os.Stderr); err == nil {
		t.Error("--log-format xml accepted")
	}
}

package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/rs/zerolog"
)

// logWriter is where udm serve's log goes, in the format --log-format
// names: "console" (zerolog's console writer, for people), "json" (one
// object a line, for journald and log shippers) or "auto" (console when
// out is a terminal, else json). Fields whose value is the empty string
// are left out of either.
func logWriter(format string, out *os.File) (io.Writer, error) {
	switch format {
	case "auto", "":
		if isTerminal(out) {
			format = "console"
		} else {
			format = "json"
		}
	case "console", "json":
	default:
		return nil, fmt.Errorf("unknown log format %q (auto, console, json)", format)
	}
	var w io.Writer = out
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: out, TimeFormat: "15:04:05.000"}
	}
	return dropEmpty{w}, nil
}

// isTerminal reports whether f is a terminal (a character device).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// emptyField matches a field with an empty string value in an event as
// zerolog encodes it, with what stands before it ({ or ,) and after it
// (, or }): inside a string a quote is escaped (\"), so `"key":""`
// unescaped right after { or , is always a field.
var emptyField = regexp.MustCompile(`([{,])"[^"\\]*":""([,}])`)

// dropEmpty leaves out of each event (zerolog writes one a Write) the
// fields whose value is "".
type dropEmpty struct{ w io.Writer }

func (d dropEmpty) Write(p []byte) (int, error) {
	if !bytes.Contains(p, []byte(`":""`)) {
		return d.w.Write(p)
	}
	q := p
	// Adjacent empty fields share a comma: repeat until none is left.
	for emptyField.Match(q) {
		q = emptyField.ReplaceAllFunc(q, func(m []byte) []byte {
			before, after := m[0], m[len(m)-1]
			switch {
			case before == '{' && after == ',':
				return []byte("{")
			case before == '{':
				return []byte("{}")
			default:
				return []byte{after}
			}
		})
	}
	if _, err := d.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

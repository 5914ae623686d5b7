package client

import (
	"errors"
	"testing"
)

var uriTests = []struct {
	in      string
	want    exportURI
	addr    string
	err     bool
	unsup   bool // errURIUnsupported
	isNBDOK bool // isURI must say yes even when parsing fails
}{
	{in: "nbd://example.com:10810/disk", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10810, Export: "disk"}, addr: "example.com:10810"},
	{in: "nbd://example.com/disk", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809, Export: "disk"}, addr: "example.com:10809"},
	{in: "nbd://example.com/", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809}},
	{in: "nbd://example.com", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809}},
	{in: "nbd://example.com//disk", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809, Export: "/disk"}},
	{in: "nbd://example.com/hello%20world", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809, Export: "hello world"}},
	{in: "NBD://127.0.0.1:1/a/b", want: exportURI{Scheme: "nbd", Host: "127.0.0.1", Port: 1, Export: "a/b"}, addr: "127.0.0.1:1"},
	{in: "nbd://[::1]:10809/x", want: exportURI{Scheme: "nbd", Host: "::1", Port: 10809, Export: "x"}, addr: "[::1]:10809"},
	{in: "nbd://[::1]/x", want: exportURI{Scheme: "nbd", Host: "::1", Port: 10809, Export: "x"}},
	{in: "nbd://[fe80::1%25eth0]:5/x", want: exportURI{Scheme: "nbd", Host: "fe80::1%eth0", Port: 5, Export: "x"}, addr: "[fe80::1%eth0]:5"},
	{in: "nbd://h/x?x-debug=1", want: exportURI{Scheme: "nbd", Host: "h", Port: 10809, Export: "x"}},
	{in: "nbd+unix:///export?socket=/tmp/s.sock", want: exportURI{Scheme: "nbd+unix", Socket: "/tmp/s.sock", Export: "export"}, addr: "/tmp/s.sock"},
	{in: "nbd+unix:///?socket=rel.sock", want: exportURI{Scheme: "nbd+unix", Socket: "rel.sock"}, addr: "rel.sock"},
	{in: "nbd+unix://?socket=/s", want: exportURI{Scheme: "nbd+unix", Socket: "/s"}},
	{in: "nbd+unix:///?socket=%00/abstract", want: exportURI{Scheme: "nbd+unix", Socket: "\x00/abstract"}, addr: "@/abstract"},
	{in: "nbd+unix:///d?socket=@odd", want: exportURI{Scheme: "nbd+unix", Socket: "@odd", Export: "d"}, addr: "./@odd"},
	{in: "nbd+unix:///a%3Fb?socket=/x%26y", want: exportURI{Scheme: "nbd+unix", Socket: "/x&y", Export: "a?b"}},

	{in: "nbds://example.com/disk?tls-certificates=/etc/c", want: exportURI{Scheme: "nbd", Host: "example.com", Port: 10809, Export: "disk", TLS: true, TLSCerts: "/etc/c"}, addr: "example.com:10809"},
	{in: "NBDS://h:7/d?tls-hostname=x.y&tls-certificates=rel%20dir", want: exportURI{Scheme: "nbd", Host: "h", Port: 7, Export: "d", TLS: true, TLSCerts: "rel dir", TLSHost: "x.y"}},
	{in: "nbds+unix:///d?socket=/s&tls-certificates=/c", want: exportURI{Scheme: "nbd+unix", Socket: "/s", Export: "d", TLS: true, TLSCerts: "/c"}, addr: "/s"},
	{in: "nbds://example.com/disk", err: true, isNBDOK: true},
	{in: "nbds+unix:///d?socket=/s", err: true, isNBDOK: true},
	{in: "nbds://h/d?tls-certificates=", err: true, isNBDOK: true},
	{in: "nbds://h/d?tls-certificates=/a&tls-certificates=/b", err: true, isNBDOK: true},
	{in: "nbd://h/d?tls-certificates=/c", err: true, isNBDOK: true},
	{in: "nbds://h/d?tls-certificates=/c&tls-psk-file=/k", err: true, unsup: true, isNBDOK: true},
	{in: "nbds+vsock://2:10809/d", err: true, unsup: true, isNBDOK: true},
	{in: "nbd+vsock://2:10809/d", err: true, unsup: true, isNBDOK: true},
	{in: "nbd://h/d?tls-type=x509", err: true, unsup: true, isNBDOK: true},
	{in: "nbd+unix:///d", err: true, isNBDOK: true},
	{in: "nbd+unix:///d?socket=", err: true, isNBDOK: true},
	{in: "nbd+unix://host/d?socket=/s", err: true, isNBDOK: true},
	{in: "nbd+unix:///d?socket=/a&socket=/b", err: true, isNBDOK: true},
	{in: "nbd://h/d?socket=/s", err: true, isNBDOK: true},
	{in: "nbd://h/d?bogus=1", err: true, isNBDOK: true},
	{in: "nbd:///d", err: true, isNBDOK: true},
	{in: "nbd://h:0/d", err: true, isNBDOK: true},
	{in: "nbd://h:65536/d", err: true, isNBDOK: true},
	{in: "nbd://h:port/d", err: true, isNBDOK: true},
	{in: "nbd://h:/d", err: true, isNBDOK: true},
	{in: "nbd://user@h/d", err: true, isNBDOK: true},
	{in: "nbd://h/d#frag", err: true, isNBDOK: true},
	{in: "nbd://h/d#", err: true, isNBDOK: true},
	{in: "nbd://[1.2.3.4]/d", err: true, isNBDOK: true},
	{in: "nbd://[zz]/d", err: true, isNBDOK: true},
	{in: "nbd://h/d%00x", err: true, isNBDOK: true},
	{in: "nbd://h/%zz", err: true, isNBDOK: true},
	{in: "nbd:h/d", err: true},
	{in: "nbd:/d", err: true},
	{in: "http://h/d", err: true},
	{in: "/dev/sda", err: true},
	{in: "", err: true},
}

func TestParseURI(t *testing.T) {
	for _, tc := range uriTests {
		got, err := parseURI(tc.in)
		if isURI(tc.in) != (!tc.err || tc.isNBDOK) {
			t.Errorf("isURI(%q) = %v", tc.in, isURI(tc.in))
		}
		if tc.err {
			if err == nil {
				t.Errorf("parseURI(%q) = %+v, want an error", tc.in, got)
				continue
			}
			if !errors.Is(err, errURI) {
				t.Errorf("parseURI(%q): %v does not match errURI", tc.in, err)
			}
			if errors.Is(err, errURIUnsupported) != tc.unsup {
				t.Errorf("parseURI(%q): %v: unsupported = %v, want %v", tc.in, err, !tc.unsup, tc.unsup)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseURI(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseURI(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if tc.addr != "" && got.Address() != tc.addr {
			t.Errorf("parseURI(%q).Address() = %q, want %q", tc.in, got.Address(), tc.addr)
		}
		again, err := parseURI(got.String())
		if err != nil || again != got {
			t.Errorf("parseURI(%q).String() = %q reparses as %+v, %v", tc.in, got.String(), again, err)
		}
	}
}

func TestURINetwork(t *testing.T) {
	u, _ := parseURI("nbd+unix:///e?socket=/s")
	if u.Network() != "unix" {
		t.Errorf("unix URI network %q", u.Network())
	}
	u, _ = parseURI("nbd://h/e")
	if u.Network() != "tcp" {
		t.Errorf("tcp URI network %q", u.Network())
	}
}

// FuzzParseURI: parseURI never panics, and what it accepts formats to a
// URI that parses back to the same value.
func FuzzParseURI(f *testing.F) {
	for _, tc := range uriTests {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseURI(s)
		if err != nil {
			if !errors.Is(err, errURI) {
				t.Fatalf("parseURI(%q): error %v does not wrap errURI", s, err)
			}
			return
		}
		if !isURI(s) {
			t.Fatalf("parseURI accepted %q but isURI says no", s)
		}
		if u.Scheme != schemeTCP && u.Scheme != schemeUnix {
			t.Fatalf("parseURI(%q): scheme %q", s, u.Scheme)
		}
		if (u.Scheme == schemeTCP) != (u.Host != "" && u.Port > 0 && u.Socket == "") {
			t.Fatalf("parseURI(%q) = %+v: inconsistent", s, u)
		}
		again, err := parseURI(u.String())
		if err != nil {
			t.Fatalf("parseURI(%q).String() = %q: %v", s, u.String(), err)
		}
		if again != u {
			t.Fatalf("parseURI(%q) = %+v; String %q reparses as %+v", s, u, u.String(), again)
		}
	})
}

package client

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// defaultPort is the IANA port for NBD.
const defaultPort = 10809

// URI schemes (NetworkBlockDevice doc/uri.md).
const (
	schemeTCP  = "nbd"
	schemeUnix = "nbd+unix"
)

// tlsHostUnix is the name a server reached over nbds+unix:// must have
// in its certificate unless tls-hostname says otherwise.
const tlsHostUnix = "localhost"

// errURI marks a string that is not an NBD URI the client can use;
// errURIUnsupported one that names a transport or option it does not
// speak (vsock, TLS with pre-shared keys). Both are wrapped with the offending URI.
var (
	errURI            = errors.New("nbd: bad URI")
	errURIUnsupported = fmt.Errorf("%w: unsupported", errURI)
)

// maxExportName is the protocol's bound on strings.
const maxExportName = 4096

// exportURI is a parsed NBD URI: nbd://host[:port]/export or
// nbd+unix:///export?socket=PATH.
type exportURI struct {
	// Scheme is schemeTCP or schemeUnix.
	Scheme string
	// Host and Port are set for schemeTCP (Host without brackets for
	// IPv6 literals).
	Host string
	Port int
	// Socket is the Unix socket's path for schemeUnix; a leading NUL
	// names an abstract socket.
	Socket string
	// Export is the export name (may be empty: the server's default).
	Export string
	// TLS (nbds://, nbds+unix://): STARTTLS, then the handshake over TLS
	// with the CA (and the client's certificate, if there is one) from
	// the directory TLSCerts; the server's certificate must name
	// TLSHost (default: the host, or localhost for a Unix socket).
	TLS      bool
	TLSCerts string
	TLSHost  string
}

// isURI reports whether name looks like an NBD URI (any nbd scheme,
// including the ones parseURI rejects): openers use it to decide who
// handles a table's device name.
func isURI(name string) bool {
	i := strings.Index(name, "://")
	if i <= 0 {
		return false
	}
	s := strings.ToLower(name[:i])
	return s == "nbd" || strings.HasPrefix(s, "nbd+") || s == "nbds" || strings.HasPrefix(s, "nbds+")
}

// parseURI parses an NBD URI. It accepts nbd:// (TCP, port 10809 unless
// given, IPv6 literals in brackets) and nbd+unix:// (a socket query
// parameter, no authority), and their TLS forms nbds:// and
// nbds+unix://, which need tls-certificates=DIR (as libnbd takes it) and
// may name the server's certificate with tls-hostname=. The export name
// is the path without its leading slash, percent-decoded. Other TLS
// parameters (PSK: tls-psk-file, tls-username), vsock, user info,
// fragments and unknown query parameters (other than the experimental
// x-*) are errors.
func parseURI(s string) (exportURI, error) {
	bad := func(format string, a ...any) (exportURI, error) {
		return exportURI{}, fmt.Errorf("%w %q: %s", errURI, s, fmt.Sprintf(format, a...))
	}
	if strings.IndexByte(s, 0) >= 0 {
		return bad("contains a NUL byte (write it as %%00)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("%v", errors.Unwrap(err))
	}
	var out exportURI
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case schemeTCP, schemeUnix:
		out.Scheme = scheme
	case "nbds", "nbds+unix":
		out.Scheme, out.TLS = strings.Replace(scheme, "nbds", "nbd", 1), true
	case "nbd+vsock", "nbds+vsock":
		return exportURI{}, fmt.Errorf("%w %q: vsock is not supported", errURIUnsupported, s)
	case "":
		return bad("no scheme (want nbd:// or nbd+unix://)")
	default:
		return bad("scheme %q is not nbd or nbd+unix", u.Scheme)
	}
	if u.Opaque != "" || !strings.Contains(s, "://") {
		return bad("want %s://...", strings.ToLower(u.Scheme))
	}
	if u.User != nil {
		return bad("user info is not supported")
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return bad("fragments are not allowed")
	}
	// The export name: the path without its leading slash.
	p := u.Path
	if p != "" && p[0] != '/' {
		return bad("export path must start with /")
	}
	out.Export = strings.TrimPrefix(p, "/")
	if len(out.Export) > maxExportName {
		return bad("export name longer than %d bytes", maxExportName)
	}
	if strings.IndexByte(out.Export, 0) >= 0 {
		return bad("export name contains a NUL byte")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	for k, v := range q {
		switch {
		case k == "socket":
			if out.Scheme != schemeUnix {
				return bad("socket= is only for nbd+unix://")
			}
			if len(v) != 1 {
				return bad("socket= given %d times", len(v))
			}
			out.Socket = v[0]
		case k == "tls-certificates" || k == "tls-hostname":
			if !out.TLS {
				return bad("%s= is only for nbds:// and nbds+unix://", k)
			}
			if len(v) != 1 || v[0] == "" {
				return bad("%s= needs one value", k)
			}
			if k == "tls-certificates" {
				out.TLSCerts = v[0]
			} else {
				out.TLSHost = v[0]
			}
		case strings.HasPrefix(k, "tls-"):
			return exportURI{}, fmt.Errorf("%w %q: TLS parameter %s is not supported (certificates only: tls-certificates=DIR)", errURIUnsupported, s, k)
		case strings.HasPrefix(k, "x-"):
			// Experimental parameters of other clients: ignored.
		default:
			return bad("unknown query parameter %q", k)
		}
	}
	if out.TLS && out.TLSCerts == "" {
		return bad("TLS needs tls-certificates=DIR (ca-cert.pem, and client-cert.pem and client-key.pem for a client certificate)")
	}
	switch out.Scheme {
	case schemeTCP:
		host := u.Hostname()
		if host == "" {
			return bad("no host")
		}
		if strings.HasPrefix(u.Host, "[") {
			ip, zone, hasZone := strings.Cut(host, "%")
			if !strings.Contains(ip, ":") || net.ParseIP(ip) == nil || hasZone && !hostChars(zone) {
				return bad("bad IPv6 literal %q", host)
			}
		} else if strings.Contains(host, ":") {
			return bad("IPv6 literal %q must be in brackets", host)
		} else if !hostChars(host) {
			return bad("bad host name %q", host)
		}
		out.Host = host
		out.Port = defaultPort
		if ps := u.Port(); ps != "" {
			n, err := strconv.Atoi(ps)
			if err != nil || n < 1 || n > 65535 {
				return bad("bad port %q", ps)
			}
			out.Port = n
		} else if strings.HasSuffix(u.Host, ":") {
			return bad("empty port")
		}
	case schemeUnix:
		if u.Host != "" {
			return bad("nbd+unix:// takes no host (got %q)", u.Host)
		}
		if out.Socket == "" {
			return bad("nbd+unix:// needs ?socket=PATH")
		}
		if strings.IndexByte(out.Socket[1:], 0) >= 0 || out.Socket == "\x00" {
			return bad("bad socket path %q", out.Socket)
		}
	}
	return out, nil
}

// Network and Address are the arguments for net.Dial.
func (u exportURI) Network() string {
	if u.Scheme == schemeUnix {
		return "unix"
	}
	return "tcp"
}

// Address is where Dial connects: host:port, or the socket path (an
// abstract socket as @name).
func (u exportURI) Address() string {
	if u.Scheme == schemeUnix {
		switch {
		case strings.HasPrefix(u.Socket, "\x00"):
			return "@" + u.Socket[1:]
		case strings.HasPrefix(u.Socket, "@"):
			return "./" + u.Socket // a file, not Go's abstract-socket spelling
		}
		return u.Socket
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// String formats u as a canonical URI (parseURI(u.String()) == u).
func (u exportURI) String() string {
	v := url.URL{Scheme: u.Scheme, Path: "/" + u.Export}
	var q string
	if u.TLS {
		v.Scheme = strings.Replace(u.Scheme, "nbd", "nbds", 1)
		q = "tls-certificates=" + queryEscape(u.TLSCerts)
		if u.TLSHost != "" {
			q += "&tls-hostname=" + queryEscape(u.TLSHost)
		}
	}
	if u.Scheme == schemeUnix {
		s := v.Scheme + "://" + v.EscapedPath() + "?socket=" + queryEscape(u.Socket)
		if q != "" {
			s += "&" + q
		}
		return s
	}
	h := u.Host
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	v.Host = h + ":" + strconv.Itoa(u.Port)
	if q != "" {
		return v.String() + "?" + q
	}
	return v.String()
}

// tlsServerName is the name the server's certificate must have.
func (u exportURI) tlsServerName() string {
	switch {
	case u.TLSHost != "":
		return u.TLSHost
	case u.Scheme == schemeUnix:
		return tlsHostUnix
	}
	return u.Host
}

// hostChars reports whether s is a plausible host name or zone: letters,
// digits, '-', '.', '_'.
func hostChars(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// queryEscape escapes a query value, keeping the characters a path shows
// plainly (url.QueryEscape would write every / as %2F).
func queryEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~/:@,!", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

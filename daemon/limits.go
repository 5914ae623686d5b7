package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Limits of the control API's HTTP server: a client that stalls sending
// its request, or reading the reply, is dropped rather than held for
// good.
const (
	// ControlReadTimeout bounds reading a request, headers and body.
	ControlReadTimeout = 30 * time.Second
	// ControlWriteTimeout bounds a request from the end of its headers
	// to the end of its reply: the handler (creating a device may open
	// remote paths, with their own timeouts) and the write. A
	// /devices/{name}/wait request, which waits for an event as long as
	// it takes, is exempt: it ends when its client goes.
	ControlWriteTimeout = 5 * time.Minute
	// ControlIdleTimeout closes a kept-alive connection with no request.
	ControlIdleTimeout = 2 * time.Minute
	// ControlMaxBody is the largest request body (a table of thousands
	// of lines is well under it); a longer one is refused.
	ControlMaxBody = 16 << 20
	// ControlMaxHeader is the most header bytes of a request.
	ControlMaxHeader = 64 << 10
)

// controlLimits are the limits of a control API server.
type controlLimits struct {
	header, read, write, idle time.Duration
	body                      int64
}

var defaultControlLimits = controlLimits{header: 10 * time.Second, read: ControlReadTimeout,
	write: ControlWriteTimeout, idle: ControlIdleTimeout, body: ControlMaxBody}

// controlServer is the control API's HTTP server, with lim.
func controlServer(h http.Handler, base context.Context, log zerolog.Logger, lim controlLimits) *http.Server {
	return &http.Server{
		Handler:           limitControl(h, lim.body),
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: lim.header,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    ControlMaxHeader,
		ErrorLog:          stdLogger(log, "control"),
	}
}

// limitControl reads a request's body (at most ControlMaxBody bytes,
// within ControlReadTimeout) before the handler runs, then lifts the read
// deadline (the handler's time is bounded by the write timeout; a read
// deadline passing under it would cancel its context), and the write
// deadline of wait requests.
func limitControl(h http.Handler, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				writeError(w, r, &apiErr{status: http.StatusRequestEntityTooLarge, errno: syscall.EFBIG,
					msg: fmt.Sprintf("request body over %d bytes", maxBody)})
				return
			}
			writeError(w, r, badRequest("reading the request: %v", err))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Time{})
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/wait") {
			rc.SetWriteDeadline(time.Time{})
		}
		h.ServeHTTP(w, r)
	})
}

// The NBD server's limits as metrics.
var (
	mNBDMem      = prometheus.NewDesc("udm_nbd_payload_bytes", "Payload bytes NBD connections hold now (the daemon-wide budget is --nbd-memory).", nil, nil)
	mNBDMemPeak  = prometheus.NewDesc("udm_nbd_payload_peak_bytes", "The most payload bytes NBD connections held at once.", nil, nil)
	mNBDMemWaits = prometheus.NewDesc("udm_nbd_payload_waits_total", "NBD requests that waited for the daemon-wide payload budget.", nil, nil)
	mNBDRefused  = prometheus.NewDesc("udm_nbd_connections_refused_total", "NBD connections closed at accept: too many (--nbd-max-conns, --nbd-max-conns-per-addr).", nil, nil)
	mNBDTimeouts = prometheus.NewDesc("udm_nbd_connections_timed_out_total", "NBD connections closed by a timeout, by kind (idle, payload).", []string{"kind"}, nil)
)

func describeLimits(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mNBDMem, mNBDMemPeak, mNBDMemWaits, mNBDRefused, mNBDTimeouts} {
		ch <- d
	}
}

func (d *Daemon) collectLimits(ch chan<- prometheus.Metric) {
	if d.nbd == nil {
		return
	}
	st := d.nbd.LimitStats()
	m := func(desc *prometheus.Desc, t prometheus.ValueType, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, t, float64(v), labels...)
	}
	m(mNBDMem, prometheus.GaugeValue, st.Memory.Load())
	m(mNBDMemPeak, prometheus.GaugeValue, st.PeakMemory.Load())
	m(mNBDMemWaits, prometheus.CounterValue, st.MemoryWaits.Load())
	m(mNBDRefused, prometheus.CounterValue, st.Refused.Load())
	m(mNBDTimeouts, prometheus.CounterValue, st.IdleClosed.Load(), "idle")
	m(mNBDTimeouts, prometheus.CounterValue, st.PayloadTimeouts.Load(), "payload")
}

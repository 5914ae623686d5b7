package api

import (
	"fmt"
	"time"

	"udm/multipath"
)

// CheckerSettings are a multipath device's path checker settings, as
// multipathd's multipaths section has them. Empty fields take the
// defaults. They are kept in the device's state file.
type CheckerSettings struct {
	// PollingInterval is how often a path is checked (Go duration: "5s",
	// from 50ms to 24h; "off": not checked).
	PollingInterval string `json:"polling_interval,omitempty"`
	// MaxPollingInterval bounds the interval, which doubles while a path
	// stays healthy.
	MaxPollingInterval string `json:"max_polling_interval,omitempty"`
	// CheckTimeout bounds one check.
	CheckTimeout string `json:"check_timeout,omitempty"`
	// NoPathRetry: fail, queue, or a number of polling intervals to
	// queue for once no path is left.
	NoPathRetry string `json:"no_path_retry,omitempty"`
	// Failback: manual, immediate, followover, or a number of seconds.
	Failback string `json:"failback,omitempty"`
	// IODeadline bounds each I/O on a path; a path that holds one longer
	// is failed and the I/O retried elsewhere ("-1s": none).
	IODeadline string `json:"io_deadline,omitempty"`
}

// MapConfig parses the settings. Durations out of the checker's bounds
// are refused (multipath.ParsePollingInterval); polling_interval=off
// turns the map's checker off.
func (s CheckerSettings) MapConfig() (multipath.MapConfig, error) {
	var c multipath.MapConfig
	dur := func(what, v string, parse func(string) (time.Duration, error), to *time.Duration) error {
		d, err := parse(v)
		if err != nil {
			return fmt.Errorf("bad %s %q: %w", what, v, err)
		}
		*to = d
		return nil
	}
	if err := dur("polling_interval", s.PollingInterval, multipath.ParsePollingInterval, &c.PollingInterval); err != nil {
		return c, err
	}
	if err := dur("max_polling_interval", s.MaxPollingInterval, multipath.ParseMaxPollingInterval, &c.MaxPollingInterval); err != nil {
		return c, err
	}
	if err := dur("check_timeout", s.CheckTimeout, multipath.ParseCheckTimeout, &c.CheckTimeout); err != nil {
		return c, err
	}
	ioDeadline := func(v string) (time.Duration, error) {
		if v == "" {
			return 0, nil
		}
		// Deadlines are enforced by a sweep every 10 ms: a shorter one
		// than the checker's minimum would fail healthy paths at random.
		d, err := time.ParseDuration(v)
		if err != nil || (d > 0 && d < multipath.MinCheckerDuration) || d > multipath.MaxCheckerDuration {
			return 0, fmt.Errorf("want a duration from %v to 24h such as 2s or 500ms, or -1s for none", multipath.MinCheckerDuration)
		}
		return d, nil
	}
	if err := dur("io_deadline", s.IODeadline, ioDeadline, &c.IODeadline); err != nil {
		return c, err
	}
	var err error
	if c.NoPathRetry, err = multipath.ParseNoPathRetry(s.NoPathRetry); err != nil {
		return c, fmt.Errorf("bad no_path_retry %q (fail, queue, or a number of checks)", s.NoPathRetry)
	}
	if c.Failback, err = multipath.ParseFailback(s.Failback); err != nil {
		return c, fmt.Errorf("bad failback %q (manual, immediate, followover, or seconds)", s.Failback)
	}
	return c, nil
}

// Set changes one setting by its JSON name.
func (s *CheckerSettings) Set(key, value string) error {
	for _, f := range s.fields() {
		if f.key == key {
			*f.v = value
			return nil
		}
	}
	return fmt.Errorf("unknown checker setting %q (polling_interval, max_polling_interval, check_timeout, no_path_retry, failback, io_deadline)", key)
}

// fields are the settings by JSON name, in the order udm checker
// prints them.
func (s *CheckerSettings) fields() []struct {
	key string
	v   *string
} {
	return []struct {
		key string
		v   *string
	}{
		{"polling_interval", &s.PollingInterval}, {"max_polling_interval", &s.MaxPollingInterval},
		{"check_timeout", &s.CheckTimeout}, {"no_path_retry", &s.NoPathRetry},
		{"failback", &s.Failback}, {"io_deadline", &s.IODeadline},
	}
}

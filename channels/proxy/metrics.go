package proxy

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts a Client's calls for Prometheus, by call (connect, join,
// event, leave):
//
//	channelsd_proxy_calls_total{call}           calls made, failed ones included
//	channelsd_proxy_errors_total{call,kind}     calls without a usable answer, by
//	                                            kind: connection, timeout, status,
//	                                            malformed, too_large, dropped
//	channelsd_proxy_duration_seconds{call}      latency of the calls, answered or not
//
// A refusal the backend answers (status "error") is an answer, not an
// error. Metrics is a prometheus.Collector: register it where the node's
// metrics are (node.Config.Collectors).
type Metrics struct {
	calls    *prometheus.CounterVec
	errs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// durationBuckets, in seconds: from a backend on the same host (1ms) to
// the default timeout and past it.
var durationBuckets = []float64{1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// NewMetrics returns Metrics with every series of every call at zero, so
// that a dashboard sees them before the first error.
func NewMetrics() *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "channelsd_proxy_calls_total",
			Help: "Calls to the application's backend, by call (connect, join, event, leave), failed ones included.",
		}, []string{"call"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "channelsd_proxy_errors_total",
			Help: "Backend calls without a usable answer, by call and kind: connection (none could be made, or it broke), timeout, status (not 2xx), malformed (not the expected JSON), too_large (an answer above the size limit), dropped (not sent: too many leaves in flight, or pushes waiting on one join). The client got {\"reason\":\"backend unavailable\"}.",
		}, []string{"call", "kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "channelsd_proxy_duration_seconds",
			Help:    "Time of the calls to the application's backend, retries included, by call.",
			Buckets: durationBuckets,
		}, []string{"call"}),
	}
	for _, call := range []string{CallConnect, CallJoin, CallEvent, CallLeave} {
		m.calls.WithLabelValues(call)
		m.duration.WithLabelValues(call)
		for _, kind := range []string{ErrorConnection, ErrorTimeout, ErrorStatus, ErrorMalformed, ErrorTooLarge} {
			m.errs.WithLabelValues(call, kind)
		}
	}
	m.errs.WithLabelValues(CallEvent, ErrorDropped)
	m.errs.WithLabelValues(CallLeave, ErrorDropped)
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.calls.Describe(ch)
	m.errs.Describe(ch)
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.calls.Collect(ch)
	m.errs.Collect(ch)
	m.duration.Collect(ch)
}

// observe counts one call; a dropped one took no time and made no call.
func (m *Metrics) observe(call string, d time.Duration, err error) {
	if m == nil {
		return
	}
	var ce *CallError
	if errors.As(err, &ce) {
		m.errs.WithLabelValues(call, ce.Kind).Inc()
		if ce.Kind == ErrorDropped {
			return
		}
	}
	m.calls.WithLabelValues(call).Inc()
	m.duration.WithLabelValues(call).Observe(d.Seconds())
}

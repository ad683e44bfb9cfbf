package harness

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

var metricsClient = &http.Client{Timeout: 10 * time.Second}

// Metrics reads the samples of names (exact, label set included, e.g.
// `channelsd_sockets{transport="websocket"}`) from the /metrics of the
// node at baseURL, which the harness's clusters leave public. A name
// without a sample is an error.
func Metrics(ctx context.Context, baseURL string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := metricsClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: HTTP %d", baseURL, res.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for _, n := range names {
			if v, ok := strings.CutPrefix(sc.Text(), n+" "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return nil, fmt.Errorf("%s: %q", n, sc.Text())
				}
				out[n] = f
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("%s/metrics has no %s", baseURL, n)
		}
	}
	return out, nil
}

// Metric is one sample of node i's /metrics (Metrics); t fails when it
// cannot be read.
func (c *Cluster) Metric(t testing.TB, i int, name string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Metrics(ctx, c.Node(i).HTTPURL(), name)
	if err != nil {
		t.Fatalf("node %d: %v", i, err)
	}
	return m[name]
}

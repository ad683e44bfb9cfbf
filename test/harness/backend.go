package harness

import (
	"context"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// DefaultBackendImage is the proxy test's application backend
// (test/images/backend); BACKEND_IMAGE overrides it.
const DefaultBackendImage = "channelsd-backend:test"

// BackendImage is the backend's image name in use.
func BackendImage() string { return envOr("BACKEND_IMAGE", DefaultBackendImage) }

// BackendAlias is the backend's name on the cluster's network: nodes
// reach it at http://backend:3000 (BackendURL).
const (
	BackendAlias = "backend"
	BackendURL   = "http://" + BackendAlias + ":3000"
	backendPort  = "3000/tcp"
)

// StartBackend starts the application backend of test/images/backend on
// the cluster's network, as BackendAlias, checking the calls' signature
// under secret ("" accepts unsigned calls; give the nodes the same as
// CHANNELS_PROXY_SECRET), and returns once it answers. Nodes call it only
// when a client connects or joins, so it may start after them. It is
// removed with the cluster.
func (c *Cluster) StartBackend(secret string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.opts.StartupTimeout)
	defer cancel()
	began := time.Now()
	if _, err := c.docker.ImageInspect(ctx, BackendImage()); err != nil {
		c.t.Fatalf("harness: image %s is not available (%v).\n"+
			"Images are built locally, never pulled: run `make images` (test/images/build.sh) first.", BackendImage(), err)
	}
	ctr, err := runPublished(func() (*testcontainers.DockerContainer, error) {
		return testcontainers.Run(ctx, BackendImage(),
			testcontainers.WithLogger(tclog.TestLogger(c.t)),
			network.WithNetwork([]string{BackendAlias}, c.network),
			testcontainers.WithEnv(map[string]string{"BACKEND_SECRET": secret}),
			testcontainers.WithExposedPorts(backendPort),
			testcontainers.WithHostConfigModifier(publishOnLoopback(backendPort)),
			testcontainers.WithWaitStrategy(wait.ForHTTP("/healthz").
				WithPort(backendPort).
				WithForcedIPv4LocalHost().
				WithPollInterval(100*time.Millisecond).
				WithStartupTimeout(c.opts.StartupTimeout)),
		)
	})
	c.track(BackendAlias, ctr)
	if err != nil {
		c.t.Fatalf("harness: starting the backend (%s): %v", BackendImage(), err)
	}
	c.t.Logf("harness: backend %s ready in %v", BackendURL, time.Since(began).Round(time.Millisecond))
}

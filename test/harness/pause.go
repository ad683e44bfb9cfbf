package harness

import (
	"context"
	"time"

	"github.com/moby/moby/client"
)

// PauseRedis freezes the Redis container (docker pause: the cgroup
// freezer stops its processes) and returns once it is paused. Unlike
// StopRedis, Redis keeps its data and its TCP connections: the nodes'
// commands and pings go unanswered until UnpauseRedis, as with a Redis
// that hangs or a network that drops packets without resetting
// connections. A paused Redis is unpaused when the test ends, before the
// containers are removed.
func (c *Cluster) PauseRedis() {
	c.t.Helper()
	c.needRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.docker.ContainerPause(ctx, c.redis.GetContainerID(), client.ContainerPauseOptions{}); err != nil {
		c.t.Fatalf("harness: pausing Redis: %v", err)
	}
	docker, id := c.docker, c.redis.GetContainerID()
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Fails harmlessly when it was unpaused already.
		_, _ = docker.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{})
	})
}

// UnpauseRedis thaws the Redis container paused by PauseRedis; it answers
// again at once, with its data and the connections it had.
func (c *Cluster) UnpauseRedis() {
	c.t.Helper()
	c.needRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.docker.ContainerUnpause(ctx, c.redis.GetContainerID(), client.ContainerUnpauseOptions{}); err != nil {
		c.t.Fatalf("harness: unpausing Redis: %v", err)
	}
}

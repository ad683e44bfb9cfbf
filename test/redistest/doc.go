// Package redistest runs a real redis-server on a free loopback port for
// the tests of the Redis-backed packages (pubsub/redis, presence/redis,
// node), and for examples that read a Redis URL from the environment
// (Launch, from a TestMain).
//
// A real server, not a fake: the tests are about what Redis does when it
// stops, freezes, restarts empty or drops a slow subscriber. The binary is
// the host's (REDIS_SERVER, else /usr/bin/redis-server, else the PATH); a
// missing binary fails the test, never skips it, so a machine without Redis
// cannot pass the suite by accident.
package redistest

package redis

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// goredisLogger sends go-redis's own log lines (dial failures and the
// like, which this package already reports in context) to slog's default
// logger at debug level instead of the standard logger's stderr. go-redis
// keeps one logger for the whole process, so it cannot belong to one
// PubSub's Options.Logger: a process with several (tests, embedders) would
// send every line to whichever came first, even after it was closed.
type goredisLogger struct{}

func (goredisLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, "redis: go-redis: "+fmt.Sprintf(format, v...))
}

var setLoggerOnce sync.Once

// routeGoredisLogs installs the adapter once per process.
func routeGoredisLogs() {
	setLoggerOnce.Do(func() { goredis.SetLogger(goredisLogger{}) })
}

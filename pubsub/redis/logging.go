package redis

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// goredisLogger sends go-redis's own log lines (dial failures and the
// like, which this package already reports in context) to slog at debug
// level instead of the standard logger's stderr.
type goredisLogger struct{ log *slog.Logger }

func (l goredisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis: go-redis: "+fmt.Sprintf(format, v...))
}

var setLoggerOnce sync.Once

// routeGoredisLogs installs the adapter once per process: go-redis keeps a
// single global logger.
func routeGoredisLogs(log *slog.Logger) {
	setLoggerOnce.Do(func() { goredis.SetLogger(goredisLogger{log}) })
}

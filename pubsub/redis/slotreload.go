package redis

import (
	"context"
	"errors"

	goredis "github.com/redis/go-redis/v9"
)

// slotReloader is a hook of a cluster client that reads the slot map
// again whenever a command or pipeline fails without an answer from
// Redis (a refused dial, a connection reset, a timeout). The clients run
// without retries or redirects, so go-redis itself only reloads on a
// MOVED reply or once a minute; a master that dies answers nothing, so
// without this the client would go on sending its slots' commands to the
// dead address for up to a minute after its replica took over. go-redis
// coalesces the reloads (one at a time, 200 ms apart), so a burst of
// failures costs a few CLUSTER SLOTS, not one each.
type slotReloader struct{ cc *goredis.ClusterClient }

func (h slotReloader) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h slotReloader) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		h.check(ctx, err)
		return err
	}
}

func (h slotReloader) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		err := next(ctx, cmds)
		h.check(ctx, err)
		return err
	}
}

func (h slotReloader) check(ctx context.Context, err error) {
	if unanswered(err) && ctx.Err() == nil {
		h.cc.ReloadState(ctx)
	}
}

// unanswered reports whether err means that Redis gave no answer: not a
// reply (an error reply is Redis speaking, and a stale map's MOVED
// reloads by itself), nor a closed client.
func unanswered(err error) bool {
	if err == nil || errors.Is(err, goredis.Nil) || errors.Is(err, goredis.ErrClosed) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply goredis.Error
	return !errors.As(err, &reply)
}

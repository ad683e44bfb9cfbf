package redis

import (
	"context"
	"slices"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Redirects. The cluster client follows no redirect (config.go: in
// go-redis a redirect and a retry are one setting, and a retried write
// may run twice), so a publish sent on a stale slot map, the first after
// a slot moved, was answered MOVED and failed. A MOVED or an ASK answer
// means that Redis ran nothing, so the writer sends those requests again
// itself, once, to the node the answer names: MOVED when the slot is
// another master's now (go-redis reloads its map on that answer, so the
// next publishes are routed to the new master's writer), ASK while the
// slot is being migrated and the keys the request touches have left
// (ASKING first, as Redis asks; the map still names the old master
// until the migration ends). A request answered MOVED or ASK again
// fails with that answer.
//
// The retry is part of the old writer's batch rather than a request
// queued on the new master's writer: the slot's publishes routed there
// after the move wait until this batch is answered (the fence,
// writers.go), so the retries stay ahead of them and the topic keeps
// its order; queued behind them, they could not.
//
// During a migration a shard channel is served by the old master until
// the slot has moved: an SPUBLISH is never answered ASK, but a history
// script is once its keys have moved, and its SPUBLISH then goes out on
// the new master, where no node is subscribed yet. The broadcast is kept
// in the history all the same, in its place, and a subscriber's channel
// gets it back from there (its next broadcast shows the gap).

// redirect sends again, once, the requests of a batch (live, answered
// by cmds) that were answered MOVED or ASK, and puts the new answers in
// cmds. It returns their indexes in live.
func (p *PubSub) redirect(ctx context.Context, live []*publishReq, cmds []goredis.Cmder) []int {
	if p.slots == nil {
		return nil
	}
	type target struct {
		addr string
		ask  bool
	}
	var (
		targets []target
		sent    map[target][]int
	)
	now := time.Now()
	for i := range min(len(live), len(cmds)) {
		err := cmds[i].Err()
		if err == nil || live[i].abandoned.Load() || !now.Before(live[i].deadline) {
			// A caller that gave up was told the broadcast failed: a
			// late one would only surprise (as in flush).
			continue
		}
		t := target{}
		var moved bool
		if t.addr, moved = goredis.IsMovedError(err); !moved {
			if t.addr, t.ask = goredis.IsAskError(err); !t.ask {
				continue
			}
		}
		if sent == nil {
			sent = make(map[target][]int)
		}
		if _, ok := sent[t]; !ok {
			targets = append(targets, t)
		}
		sent[t] = append(sent[t], i)
	}
	var ran []int
	for _, t := range targets {
		c := p.slots.node(t.addr)
		if c == nil {
			continue // the answer stands
		}
		idx := sent[t]
		p.redirected.Add(uint64(len(idx)))
		again, _ := c.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
			for _, i := range idx {
				if t.ask {
					pipe.Do(ctx, "asking")
				}
				r := live[i]
				switch {
				case r.hist != nil:
					// In full: the node may not have the script cached.
					historyPublish.Eval(ctx, pipe, r.hist.keys, r.hist.args...)
				case r.sharded:
					_ = pipe.Process(ctx, spublishCmd(ctx, r.channel, r.data))
				default:
					_ = pipe.Process(ctx, publishCmd(ctx, r.channel, r.data))
				}
			}
			return nil
		})
		step := 1
		if t.ask {
			step = 2
		}
		for j, i := range idx {
			if k := (j+1)*step - 1; k < len(again) {
				cmds[i] = again[k]
			}
		}
		ran = append(ran, idx...)
	}
	return ran
}

// runOrder returns the indexes 0..n-1 of a batch's requests in the
// order Redis ran each topic's: those sent again in no later list first,
// then each list's in turn (a request in two lists ran when the last
// one sent it), each in batch order. A topic's requests in one batch
// share a slot, so they are sent again together or not at all.
func runOrder(n int, later ...[]int) []int {
	rank := make([]int, n)
	for k, l := range later {
		for _, i := range l {
			rank[i] = k + 1
		}
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return rank[a] - rank[b] })
	return order
}

package redis

import (
	"sync"
	"time"
)

// rateLog lets one message through per logEvery and counts the rest: a
// Redis full of entries that clients cannot be sent (written by another
// release, or by hand) is read on every List, and would otherwise log on
// every join.
type rateLog struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

const logEvery = 10 * time.Second

func (l *rateLog) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed = 0
	l.next = now.Add(logEvery)
	return true, n
}

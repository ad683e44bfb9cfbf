package redis

import goredis "github.com/redis/go-redis/v9"

// A topic's history lives in two keys that share the hash tag {<topic>},
// so that one script can touch both on a Redis Cluster shard too:
//
//	<prefix>:h:{<topic>}:s  stream: one entry per broadcast, id <offset>-0,
//	                        field "e" = the envelope with its position
//	<prefix>:h:{<topic>}:m  hash: epoch, top (the newest offset)
//
// Both get the topic's TTL again on every broadcast. The meta hash is the
// history's identity: when it is missing (never created, expired, Redis
// restarted empty, FLUSHALL) the next script to touch the topic creates
// it with a new epoch and drops whatever stream was left, so no offset
// is ever given twice in one epoch.

// historyPublish assigns the next offset, retains and publishes one
// broadcast, all in one step: Redis runs a script alone, so no reader of
// the stream nor any subscriber of the channel sees offsets out of order.
//
//	KEYS[1] stream, KEYS[2] meta
//	ARGV[1] epoch to use if the history is new
//	ARGV[2] TTL in milliseconds
//	ARGV[3] Size (trimmed approximately: MAXLEN ~)
//	ARGV[4] channel
//	ARGV[5] envelope head, flag bit 1 set (appendEnvelopeHead)
//	ARGV[6] payload
//	ARGV[7] "1": PUBLISH with the position; else the floor's form (the
//	        Gate says some node cannot read an extension area)
//	ARGV[8] "s": SPUBLISH (ARGV[4] is then the topic's shard channel,
//	        in the keys' slot); else PUBLISH
//
// Returns {epoch, offset}. The stream always keeps the position: only
// nodes of this release and later read it.
//
// Lengths: a position is at most 53 bytes (maxPositionLen), so the
// record's length and the area's length are one varint byte each.
// string.format('%d') and not '..' for numbers: Lua would write an offset
// past 10^14 in exponent form.
var historyPublish = goredis.NewScript(`
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[2], 'top', 1)
local pos = epoch .. ':' .. string.format('%d', top)
local rec = '\1' .. string.char(#pos) .. pos
local head = ARGV[5]
local env = head .. string.char(#rec) .. rec .. ARGV[6]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], string.format('%d-0', top), 'e', env)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local publish = 'PUBLISH'
if ARGV[8] == 's' then
  publish = 'SPUBLISH'
end
if ARGV[7] == '1' then
  redis.call(publish, ARGV[4], env)
else
  redis.call(publish, ARGV[4], string.sub(head, 1, 1) .. string.char(string.byte(head, 2) - 2) .. string.sub(head, 3) .. ARGV[6])
end
return {epoch, top}
`)

// historyRead reads a topic's history in one step, O(entries returned).
//
//	KEYS[1] stream, KEYS[2] meta
//	ARGV[1] epoch to use if the history is new
//	ARGV[2] TTL in milliseconds
//	ARGV[3] "since", "last" or "top"
//	ARGV[4] since: epoch
//	ARGV[5] since: offset
//	ARGV[6] since: limit (0: none); last: count
//
// Returns {epoch, top, first retained offset (0: none), entries}. A
// missing history is created (top 0, TTL set), so a reader told "E:0"
// finds the next broadcast in epoch E. Entries are XRANGE's (or, for
// "last", XREVRANGE's: newest first); none when the position cannot be
// served (another epoch, ahead, trimmed away), which the caller tells
// from the three numbers with the same rules.
var historyRead = goredis.NewScript(`
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'top')
local epoch = meta[1]
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {epoch, 0, 0, {}}
end
local top = tonumber(meta[2]) or 0
local first = 0
local f = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #f > 0 then
  first = tonumber(string.match(f[1][1], '^(%d+)'))
end
if ARGV[3] == 'since' then
  local since = tonumber(ARGV[5])
  if ARGV[4] ~= epoch or since >= top or first == 0 or first > since + 1 then
    return {epoch, top, first, {}}
  end
  local n = top - since
  local limit = tonumber(ARGV[6])
  if limit > 0 and limit < n then
    n = limit
  end
  return {epoch, top, first, redis.call('XRANGE', KEYS[1], string.format('%d-0', since + 1), '+', 'COUNT', n)}
elseif ARGV[3] == 'last' then
  return {epoch, top, first, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[6])}
end
return {epoch, top, first, {}}
`)

package redis

import "strings"

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// keySlot returns the Redis Cluster hash slot of a key or shard channel:
// CRC16 (XMODEM) of its hash tag, the text between the first '{' and the
// first '}' after it when that text is not empty, or of the whole name
// otherwise, modulo the slot count. The node computes it to route each
// SSUBSCRIBE to the master that owns the channel, as Redis requires.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[k]]
	}
	return int(crc) % clusterSlots
}

// crc16Table holds CRC16's remainder for every leading byte (polynomial
// 0x1021, no reflection), built once.
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

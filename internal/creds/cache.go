package creds

import (
	"container/list"
	"sort"
	"sync"
	"time"
)

// cacheKey identifies one assumed-role session.
type cacheKey struct {
	RoleARN     string
	ExternalID  string
	SessionName string
}

func (k cacheKey) flightKey() string {
	return k.RoleARN + "\x00" + k.ExternalID + "\x00" + k.SessionName
}

type entry struct {
	key        cacheKey
	creds      *Credentials
	refreshAt  time.Time // background refresh becomes due
	nextTry    time.Time // after a failure, no new STS call before this
	lastUsed   time.Time
	refreshing bool // an async refresh holds the claim (see claim/unclaim)
	elem       *list.Element
}

// snapshot is a copy of an entry's state taken under the lock.
type snapshot struct {
	creds      *Credentials
	refreshAt  time.Time
	nextTry    time.Time
	refreshing bool
}

// lru is a bounded map of sessions; the least recently used entry is
// evicted when full. A mutex (not RWMutex) because every hit reorders.
type lru struct {
	mu  sync.Mutex
	max int
	m   map[cacheKey]*entry
	ll  list.List // front = most recently used
}

func newLRU(max int) *lru {
	return &lru{max: max, m: make(map[cacheKey]*entry)}
}

// get returns the entry's state and marks it used at now.
func (c *lru) get(k cacheKey, now time.Time) (snapshot, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return snapshot{}, false
	}
	e.lastUsed = now
	c.ll.MoveToFront(e.elem)
	return snapshot{creds: e.creds, refreshAt: e.refreshAt, nextTry: e.nextTry, refreshing: e.refreshing}, true
}

// peek returns the entry's state without marking it used.
func (c *lru) peek(k cacheKey) (snapshot, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return snapshot{}, false
	}
	return snapshot{creds: e.creds, refreshAt: e.refreshAt, nextTry: e.nextTry, refreshing: e.refreshing}, true
}

// put stores fresh credentials. A new entry counts as used at now; a
// refreshed one keeps its last use, so idle sessions stop being refreshed.
// It returns how many entries were evicted.
func (c *lru) put(k cacheKey, cr *Credentials, refreshAt, now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.creds, e.refreshAt, e.nextTry = cr, refreshAt, time.Time{}
		return 0
	}
	e := &entry{key: k, creds: cr, refreshAt: refreshAt, lastUsed: now}
	e.elem = c.ll.PushFront(e)
	c.m[k] = e
	evicted := 0
	for len(c.m) > c.max {
		old := c.ll.Back().Value.(*entry)
		c.ll.Remove(old.elem)
		delete(c.m, old.key)
		evicted++
	}
	return evicted
}

// fail records a failed refresh: no new attempt before until.
func (c *lru) fail(k cacheKey, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.nextTry = until
	}
}

// claim marks k as being refreshed; false if it already is, or is gone.
// Only the holder of a claim releases it (unclaim), whatever the outcome,
// so a refresh that joined another caller's STS call cannot leave it set.
func (c *lru) claim(k cacheKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || e.refreshing {
		return false
	}
	e.refreshing = true
	return true
}

// unclaim releases a claim.
func (c *lru) unclaim(k cacheKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.refreshing = false
	}
}

// due drops expired entries and returns, earliest first, the keys of
// entries used since activeSince whose refresh is due at now and not
// already running or backing off.
func (c *lru) due(now, activeSince time.Time) []cacheKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	type item struct {
		k  cacheKey
		at time.Time
	}
	var items []item
	for k, e := range c.m {
		if !now.Before(e.creds.Expiration) && !e.refreshing {
			c.ll.Remove(e.elem)
			delete(c.m, k)
			continue
		}
		if e.refreshing || now.Before(e.refreshAt) || now.Before(e.nextTry) || e.lastUsed.Before(activeSince) {
			continue
		}
		items = append(items, item{k, e.refreshAt})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].at.Before(items[j].at) })
	keys := make([]cacheKey, len(items))
	for i, it := range items {
		keys[i] = it.k
	}
	return keys
}

func (c *lru) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

//go:build linux

package e2e

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// stream opens connections one after the other from ns as cred to `to` until stopped, keeping every
// reply: the evidence that no connection escaped the proxy while the rules changed.
type stream struct {
	t       *testing.T
	mu      sync.Mutex
	replies []string
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startStream(t *testing.T, ns *testutil.NetNS, cred testutil.Cred, to netip.AddrPort) *stream {
	s := &stream{t: t, stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			got := query(t, ns, cred, "tcp", to)
			s.mu.Lock()
			s.replies = append(s.replies, got)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.replies)
}

// waitFor waits until at least n connections were made (30s at most).
func (s *stream) waitFor(n int) {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if s.count() >= n {
			return
		}
	}
	s.t.Errorf("fewer than %d connections made in 30s", n)
}

// end stops the stream and checks that every reply was want; it returns how many there were.
func (s *stream) end(want string) int {
	s.t.Helper()
	close(s.stop)
	s.wg.Wait()
	for i, got := range s.replies {
		if got != want {
			s.t.Errorf("connection %d of %d: %s, want %s", i+1, len(s.replies), got, want)
		}
	}
	return len(s.replies)
}

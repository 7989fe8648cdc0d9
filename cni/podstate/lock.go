package podstate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockName is the file, in the records' directory, whose lock Lock takes. List skips it (a dot file).
const lockName = ".lock"

// lockPoll is how often Lock tries again while another holds the lock.
const lockPoll = 20 * time.Millisecond

// Lock takes the directory's lock, which whoever changes pods' rules from their records holds while it
// does — a migration (MigrateAll: `shunt migrate-pods`, the agent's --migrate-pods) and the agent's
// drift audit —, so that neither takes the other's work half-done for drift, nor undoes it. It waits
// until the lock is free or ctx is done; unlock releases it. The lock is the kernel's (flock): it goes
// with a process that dies holding it.
func (s Store) Lock(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(s.Dir, lockName)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

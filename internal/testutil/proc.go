package testutil

import (
	"bytes"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// ReadyTimeout bounds how long Start waits for a process's "ready" line.
const ReadyTimeout = 15 * time.Second

// Start starts argv inside n as cred (root when nil), waits until it prints
// the line "ready" on standard output and kills it when t ends. It fails t
// if the process exits or stays silent for ReadyTimeout first. The output is
// logged when t has failed.
func (n *NetNS) Start(t testing.TB, cred *Cred, argv ...string) {
	t.Helper()
	n.StartCmd(t, n.Command(cred, argv...))
}

// StartCmd is Start for a command the caller made (with n.Command, then
// changed, for example placed in a Cgroup): it starts cmd, waits until it
// prints the line "ready" on standard output and kills it when t ends. It
// fails t if the process exits or stays silent for ReadyTimeout first. The
// output is logged when t has failed. cmd's Stdout and Stderr must be nil.
func (n *NetNS) StartCmd(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	stdout := &readyWriter{ready: make(chan struct{})}
	var stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s in %s:\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), n.Name, stdout.String(), stderr.String())
		}
	})

	timer := time.NewTimer(ReadyTimeout)
	defer timer.Stop()
	select {
	case <-stdout.ready:
	case <-exited:
		t.Fatalf("%s exited before ready: %v\nstderr:\n%s", strings.Join(cmd.Args, " "), waitErr, stderr.String())
	case <-timer.C:
		t.Fatalf("%s not ready after %v\nstderr:\n%s", strings.Join(cmd.Args, " "), ReadyTimeout, stderr.String())
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// readyWriter keeps what is written and closes ready at the first line that
// reads "ready".
type readyWriter struct {
	lockedBuffer
	ready chan struct{}
	once  sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	n, err := w.lockedBuffer.Write(p)
	for line := range strings.Lines(w.String()) {
		if line == "ready\n" {
			w.once.Do(func() { close(w.ready) })
		}
	}
	return n, err
}

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
	stdout := NewReadyWriter()
	var stderr LockedBuffer
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
	case <-stdout.Ready():
	case <-exited:
		t.Fatalf("%s exited before ready: %v\nstderr:\n%s", strings.Join(cmd.Args, " "), waitErr, stderr.String())
	case <-timer.C:
		t.Fatalf("%s not ready after %v\nstderr:\n%s", strings.Join(cmd.Args, " "), ReadyTimeout, stderr.String())
	}
}

// LockedBuffer is a bytes.Buffer for a process's output that is safe for
// concurrent use. The zero value is empty and ready to use.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ReadyWriter keeps what is written to it (a process's standard output)
// and closes Ready at the first line that reads "ready". It is safe for
// concurrent use.
type ReadyWriter struct {
	LockedBuffer
	ready chan struct{}
	once  sync.Once
}

// NewReadyWriter returns an empty ReadyWriter.
func NewReadyWriter() *ReadyWriter { return &ReadyWriter{ready: make(chan struct{})} }

// Ready is closed once a line "ready" has been written.
func (w *ReadyWriter) Ready() <-chan struct{} { return w.ready }

// Write appends p and closes Ready once a line "ready" is in.
func (w *ReadyWriter) Write(p []byte) (int, error) {
	n, err := w.LockedBuffer.Write(p)
	for line := range strings.Lines(w.String()) {
		if line == "ready\n" {
			w.once.Do(func() { close(w.ready) })
		}
	}
	return n, err
}

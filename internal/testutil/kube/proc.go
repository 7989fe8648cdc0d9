package kube

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a server process whose standard output and error go to a log file.
type proc struct {
	cmd     *exec.Cmd
	logPath string

	done chan struct{} // closed once the process has exited
	err  error         // Wait's result, set before done is closed

	stopOnce sync.Once
}

// startProc starts argv with its output in logPath, in the network
// namespace at netns unless that is "".
func startProc(netns, logPath string, argv ...string) (*proc, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the thread that forked the
		// child exits, not the process: hold this thread until the child
		// is gone, so the Go runtime cannot retire it.
		runtime.LockOSThread()
		defer log.Close()
		if netns == "" {
			defer runtime.UnlockOSThread()
		} else if err := enterNetNS(netns); err != nil {
			started <- err
			return // locked: the runtime retires the thread
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the process
// to exit. Later calls wait for the first.
func (p *proc) stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// logContains reports whether the log holds s.
func (p *proc) logContains(s string) bool {
	data, _ := os.ReadFile(p.logPath)
	return bytes.Contains(data, []byte(s))
}

// tail returns the log's last n lines.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

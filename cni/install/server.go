package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shuntmesh/shunt/cni"
)

// Handler serves /healthz (200 while the process runs), /readyz (200 once the plugin is installed and
// verified, else 503 and why) and /metrics (Prometheus).
func (in *Installer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := in.readiness()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	if in.audit != nil {
		in.audit.serve(mux)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(in.metrics.reg, promhttp.HandlerOpts{Registry: in.metrics.reg}))
	return mux
}

// listenReports opens the report socket at path, replacing a stale one.
func listenReports(path string) (*net.UnixConn, error) {
	if err := prepareSocket("report", path); err != nil {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("report socket: %w", err)
	}
	return conn, nil
}

// prepareSocket makes the directory of the what socket at path and removes a stale socket there.
func prepareSocket(what, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("%s socket %s: exists and is not a socket", what, path)
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	return nil
}

// readReports counts the plugin's reports and hands failed CHECKs to the repair loop, until conn is
// closed.
func (in *Installer) readReports(conn *net.UnixConn) {
	buf := make([]byte, reportBufferSize)
	for {
		n, err := conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			in.log.Warn("read plugin report", "error", err)
			time.Sleep(100 * time.Millisecond) // no hot loop on a lasting error
			continue
		}
		var r cni.Report
		if err := json.Unmarshal(buf[:n], &r); err != nil {
			in.log.Warn("bad plugin report", "error", err)
			continue
		}
		in.log.Debug("plugin report", "command", r.Command, "namespace", r.Namespace, "pod", r.Name,
			"outcome", r.Outcome, "reason", r.Reason, "seconds", r.TotalSeconds)
		in.metrics.observe(r)
		if r.Command == "CHECK" && r.Outcome == cni.OutcomeCheckFailed && in.repair != nil {
			in.repair.checkFailed(r)
		}
	}
}

// verifyPlugin runs the installed plugin as a runtime would for VERSION, with a config made of our
// entry, and returns the CNI versions it supports.
func verifyPlugin(ctx context.Context, path string, entry []byte) ([]string, error) {
	conf := append([]byte(`{"cniVersion":"1.0.0","name":"shunt-verify",`), entry[1:]...)
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = []string{"CNI_COMMAND=VERSION", "PATH=" + os.Getenv("PATH")}
	cmd.Stdin = bytes.NewReader(conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("run %s with CNI_COMMAND=VERSION: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var v struct {
		CNIVersion string   `json:"cniVersion"`
		Supported  []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil || len(v.Supported) == 0 {
		return nil, fmt.Errorf("%s with CNI_COMMAND=VERSION answered %q, not a CNI version result", path, bytes.TrimSpace(out))
	}
	return v.Supported, nil
}

// Package shim is the CNI plugin binary a runtime executes for every pod (shunt-cni): a small client
// that hands the command to the node agent, which runs it in its own process, and prints the agent's
// answer. Starting the full shunt binary for each pod costs more than the plugin's work (the Go
// runtime, client-go's and the backends' package initialisation); the shim links the standard library
// and golang.org/x/sys only.
//
// When the agent cannot run the command — no socket, nobody listening, an agent that does not serve
// commands (no capabilities to enter the pod's namespace), no answer in time — the shim executes the
// standalone plugin installed beside it (StandaloneName), which does the whole work itself: a pod is
// captured either way, or fails to start. Commands other than ADD, CHECK and DEL go to the standalone
// plugin directly.
package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultName is the shim's file name, in the CNI bin directory (the plugin's type) and beside the
// shunt binary in shunt's image.
const DefaultName = "shunt-cni"

// StandaloneName is the file name of the standalone plugin, installed in the same directory as the
// shim.
const StandaloneName = "shunt-cni-standalone"

// Path is the agent's endpoint for CNI commands.
const Path = "/v1/cni"

// Request is one CNI command as the runtime gave it to the shim: CNI_* variables and stdin.
type Request struct {
	Command     string `json:"command"`
	ContainerID string `json:"containerID,omitempty"`
	Netns       string `json:"netns,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	Args        string `json:"args,omitempty"`
	Path        string `json:"path,omitempty"`
	Stdin       []byte `json:"stdin"`
}

// Response is what the plugin printed on stdout and whether it failed (exit status 1; Output is then
// the CNI error).
type Response struct {
	Output []byte `json:"output,omitempty"`
	Failed bool   `json:"failed,omitempty"`
}

// Defaults the shim needs from the plugin's configuration (cni.NetConf keeps the same ones).
const (
	defaultAgentSocket = "/var/run/shunt/agent.sock"
	defaultAPITimeout  = 20 * time.Second
	// programTimeout is what the agent is given beyond api_timeout to program a pod's rules before
	// the shim stops waiting and runs the standalone plugin.
	programTimeout = 30 * time.Second
	dialTimeout    = 200 * time.Millisecond
)

// Main runs the shim as a runtime executes it. It exits the process, or replaces it with the
// standalone plugin.
func Main() {
	cmd := os.Getenv("CNI_COMMAND")
	switch cmd {
	case "ADD", "CHECK", "DEL":
	default:
		exitStandalone(nil, errors.New("command "+cmd+" is run by the standalone plugin"))
	}
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		exitStandalone(nil, err)
	}
	socket, timeout := settings(stdin)
	if socket == "" {
		exitStandalone(stdin, errors.New("agent_socket is empty"))
	}
	req := Request{
		Command: cmd, ContainerID: os.Getenv("CNI_CONTAINERID"), Netns: os.Getenv("CNI_NETNS"),
		IfName: os.Getenv("CNI_IFNAME"), Args: os.Getenv("CNI_ARGS"), Path: os.Getenv("CNI_PATH"), Stdin: stdin,
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	resp, err := Do(ctx, socket, &req)
	cancel()
	if err != nil {
		exitStandalone(stdin, err)
	}
	os.Stdout.Write(resp.Output)
	if resp.Failed {
		os.Exit(1)
	}
	os.Exit(0)
}

// settings reads the agent's socket and the time to wait for it from the plugin's configuration. A
// configuration that cannot be read is the standalone plugin's to reject, with its errors.
func settings(stdin []byte) (socket string, timeout time.Duration) {
	var conf struct {
		AgentSocket *string `json:"agent_socket"`
		APITimeout  string  `json:"api_timeout"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return "", 0
	}
	socket = defaultAgentSocket
	if conf.AgentSocket != nil {
		socket = *conf.AgentSocket
	}
	timeout = defaultAPITimeout
	if d, err := time.ParseDuration(conf.APITimeout); err == nil && d > 0 {
		timeout = d
	}
	return socket, timeout + programTimeout
}

// ErrNotServed is an agent that answered but does not run commands: the standalone plugin must.
var ErrNotServed = errors.New("the node agent does not run CNI commands")

// Do asks the agent at socket to run req. Any error means the agent did not run it (or its answer was
// lost) and the standalone plugin should: running a command twice is safe, as every command is
// idempotent.
func Do(ctx context.Context, socket string, req *Request) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+Path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	r, err := client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	defer r.Body.Close()
	data, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	if r.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s answered %s: %s", ErrNotServed, socket, r.Status, bytes.TrimSpace(data))
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("node agent at %s: decode answer: %w", socket, err)
	}
	return &resp, nil
}

// exitStandalone replaces the process with the standalone plugin, giving it stdin (already read, when
// not nil) and the environment unchanged. why is logged on stderr, which runtimes record, when the
// agent was meant to run the command.
func exitStandalone(stdin []byte, why error) {
	if stdin != nil {
		fmt.Fprintf(os.Stderr, "shunt-cni: running the standalone plugin: %v\n", why)
		if err := restoreStdin(stdin); err != nil {
			fail(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fail(err)
	}
	path := filepath.Join(filepath.Dir(exe), StandaloneName)
	err = syscall.Exec(path, append([]string{path}, os.Args[1:]...), os.Environ())
	fail(fmt.Errorf("execute %s: %w", path, err))
}

// restoreStdin makes stdin a memory file holding data, read from its start, so that the standalone
// plugin reads the configuration the runtime wrote.
func restoreStdin(data []byte) error {
	fd, err := unix.MemfdCreate("cni-stdin", 0)
	if err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cni-stdin")
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	if err := unix.Dup2(fd, 0); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	return nil
}

// fail prints a CNI error on stdout, as a plugin does, and exits 1.
func fail(err error) {
	out, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "code": 999, "msg": "shunt-cni", "details": err.Error()})
	os.Stdout.Write(out)
	os.Exit(1)
}

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
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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
//
// The exchange is one HTTP/1.1 request on a connection closed after the answer, written and read
// here rather than with net/http: linking net/http (and the crypto packages it brings) delays the
// shim's main by about 4.5 ms at every start (GODEBUG=inittrace=1: 7.3 ms to main with it, 2.9 ms
// without), which a runtime pays for every pod.
func Do(ctx context.Context, socket string, req *Request) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", Path, len(body))
	if _, err := conn.Write(append([]byte(head), body...)); err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	answer, err := io.ReadAll(io.LimitReader(conn, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	code, data, err := parseAnswer(answer)
	if err != nil {
		return nil, fmt.Errorf("node agent at %s: %w", socket, err)
	}
	if code != 200 {
		return nil, fmt.Errorf("%w: %s answered %d: %s", ErrNotServed, socket, code, bytes.TrimSpace(data))
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("node agent at %s: decode answer: %w", socket, err)
	}
	return &resp, nil
}

// maxAnswer bounds the agent's answer: a CNI result with its headers.
const maxAnswer = 16 << 20

// parseAnswer splits an HTTP/1.1 answer read to the end of its connection into its status code and
// body. The agent sends a Content-Length; an answer without one, or chunked, is refused.
func parseAnswer(answer []byte) (code int, body []byte, err error) {
	head, body, ok := bytes.Cut(answer, []byte("\r\n\r\n"))
	if !ok {
		return 0, nil, errors.New("truncated answer")
	}
	lines := strings.Split(string(head), "\r\n")
	proto, status, _ := strings.Cut(lines[0], " ")
	if !strings.HasPrefix(proto, "HTTP/1.") {
		return 0, nil, fmt.Errorf("not an HTTP/1 answer: %q", lines[0])
	}
	codeText, _, _ := strings.Cut(status, " ")
	code, err = strconv.Atoi(codeText)
	if err != nil || code < 100 || code > 999 {
		return 0, nil, fmt.Errorf("bad status line %q", lines[0])
	}
	length := -1
	for _, l := range lines[1:] {
		name, value, _ := strings.Cut(l, ":")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			if length, err = strconv.Atoi(strings.TrimSpace(value)); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("bad Content-Length %q", value)
			}
		case "transfer-encoding":
			return 0, nil, fmt.Errorf("unexpected Transfer-Encoding %q", strings.TrimSpace(value))
		}
	}
	if length < 0 {
		return 0, nil, errors.New("answer without Content-Length")
	}
	if len(body) < length {
		return 0, nil, fmt.Errorf("answer body of %d bytes, want %d", len(body), length)
	}
	return code, body[:length], nil
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

// fail prints a CNI error on stdout, as a plugin does, and exits 1.
func fail(err error) {
	out, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "code": 999, "msg": "shunt-cni", "details": err.Error()})
	os.Stdout.Write(out)
	os.Exit(1)
}

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve answers the shim's requests on a unix socket in a temporary directory with h.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestDo(t *testing.T) {
	sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
		var req Request
		if r.Method != http.MethodPost || r.URL.Path != Path || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(Response{Output: append([]byte("ran "+req.Command+" "), req.Stdin...), Failed: req.Command == "CHECK"})
	})
	for _, cmd := range []string{"ADD", "CHECK"} {
		resp, err := Do(context.Background(), sock, &Request{Command: cmd, Stdin: []byte(`{"name":"k8s"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(resp.Output); got != "ran "+cmd+` {"name":"k8s"}` || resp.Failed != (cmd == "CHECK") {
			t.Errorf("%s: output %q failed %v", cmd, got, resp.Failed)
		}
	}
}

func TestDoAgentNotServing(t *testing.T) {
	sock := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the node agent does not run CNI commands", http.StatusNotFound)
	})
	_, err := Do(context.Background(), sock, &Request{Command: "ADD"})
	if !errors.Is(err, ErrNotServed) {
		t.Errorf("agent answering 404: %v, want ErrNotServed", err)
	}
	if _, err := Do(context.Background(), filepath.Join(t.TempDir(), "none.sock"), &Request{Command: "ADD"}); err == nil {
		t.Error("no socket: no error")
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct {
		conf   string
		socket string
		wait   time.Duration
	}{
		{`{"name":"k8s"}`, defaultAgentSocket, defaultAPITimeout + programTimeout},
		{`{"agent_socket":"/run/a.sock","api_timeout":"5s"}`, "/run/a.sock", 5*time.Second + programTimeout},
		{`{"agent_socket":""}`, "", defaultAPITimeout + programTimeout},
		{`{"api_timeout":"soon"}`, defaultAgentSocket, defaultAPITimeout + programTimeout},
		{`not json`, "", 0},
	} {
		socket, wait := settings([]byte(tc.conf))
		if socket != tc.socket || wait != tc.wait {
			t.Errorf("settings(%s) = %q, %v; want %q, %v", tc.conf, socket, wait, tc.socket, tc.wait)
		}
	}
}

func FuzzSettings(f *testing.F) {
	f.Add([]byte(`{"agent_socket":"/run/a.sock","api_timeout":"5s"}`))
	f.Add([]byte(`{"agent_socket":null,"api_timeout":"-1s"}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		socket, wait := settings(conf)
		if socket != "" && wait < programTimeout {
			t.Errorf("settings(%q) waits %v for %q", conf, wait, socket)
		}
	})
}

// The shim, built, as a runtime runs it: with no agent it becomes the standalone plugin beside it,
// which reads the same stdin and environment; with an agent, it prints the agent's answer.
func TestShimBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the shim")
	}
	dir := t.TempDir()
	shim := filepath.Join(dir, DefaultName)
	build := exec.Command("go", "build", "-o", shim, "github.com/shuntmesh/shunt/cmd/shunt-cni")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	standalone := "#!/bin/sh\necho \"standalone $CNI_COMMAND $CNI_CONTAINERID\"\ncat\n"
	if err := os.WriteFile(filepath.Join(dir, StandaloneName), []byte(standalone), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, command, conf string) (string, error) {
		cmd := exec.Command(shim)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/x",
			"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "PATH=/usr/bin:/bin"}
		cmd.Stdin = strings.NewReader(conf)
		out, err := cmd.Output()
		return string(out), err
	}
	noAgent := `{"name":"k8s","agent_socket":"` + filepath.Join(dir, "none.sock") + `"}`
	for _, command := range []string{"ADD", "DEL", "VERSION", "GC"} {
		out, err := run(t, command, noAgent)
		if err != nil || out != "standalone "+command+" c1\n"+noAgent {
			t.Errorf("%s with no agent: %q, %v; want the standalone plugin with the same stdin", command, out, err)
		}
	}
	sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
		var req Request
		_ = json.NewDecoder(r.Body).Decode(&req)
		_ = json.NewEncoder(w).Encode(Response{Output: []byte(`{"code":7,"msg":"from the agent"}`), Failed: req.Netns == "/var/run/netns/x"})
	})
	out, err := run(t, "ADD", `{"name":"k8s","agent_socket":"`+sock+`"}`)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || out != `{"code":7,"msg":"from the agent"}` {
		t.Errorf("ADD the agent failed: %q, %v; want its error and exit status 1", out, err)
	}
}

func TestParseAnswer(t *testing.T) {
	for _, tc := range []struct {
		answer string
		code   int
		body   string
		bad    bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, "{}", false},
		{"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\nX: y\r\n\r\nnope\n", 404, "nope\n", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing", 200, "{}", false},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 0, "", true},
		{"HTTP/1.1 200 OK\r\n\r\n{}", 0, "", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", 0, "", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", 0, "", true},
		{"SSH-2.0\r\n\r\n", 0, "", true},
		{"HTTP/1.1 abc\r\nContent-Length: 0\r\n\r\n", 0, "", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2", 0, "", true},
	} {
		code, body, err := parseAnswer([]byte(tc.answer))
		if (err != nil) != tc.bad || code != tc.code || string(body) != tc.body {
			t.Errorf("parseAnswer(%q) = %d, %q, %v", tc.answer, code, body, err)
		}
	}
}

func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope\n"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		code, body, err := parseAnswer(answer)
		if err == nil && (code < 100 || code > 999 || len(body) > len(answer)) {
			t.Errorf("parseAnswer(%q) = %d, %d bytes", answer, code, len(body))
		}
	})
}

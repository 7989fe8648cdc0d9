package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Backoff between attempts to read a pod, and the most one attempt may take; the whole read is
// bounded by the NetConf's api_timeout.
const (
	firstBackoff = 100 * time.Millisecond
	maxBackoff   = 2 * time.Second
	maxAttempt   = 5 * time.Second
)

// minAttempt is the least time an attempt that leaves room for another is given.
const minAttempt = 500 * time.Millisecond

// attemptBound is how long one attempt may take: maxAttempt, but at most half the time ctx leaves, so
// that one hung request (a dead connection, an overloaded replica) cannot use the whole api_timeout and
// another attempt still fits; when half is below minAttempt, the last attempt takes what is left.
func attemptBound(ctx context.Context) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok {
		return maxAttempt
	}
	left := time.Until(deadline)
	if half := left / 2; half >= minAttempt {
		return min(maxAttempt, half)
	}
	return max(left, 0)
}

// restConfig loads the plugin's kubeconfig.
func restConfig(path string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// checkKubeconfig says why the kubeconfig at path cannot be used, or nil.
func checkKubeconfig(path string) error {
	cfg, err := restConfig(path)
	if err != nil {
		return err
	}
	if cfg.BearerTokenFile != "" {
		if _, err := os.ReadFile(cfg.BearerTokenFile); err != nil {
			return fmt.Errorf("kubeconfig %s: token: %w", path, err)
		}
	}
	return nil
}

// apiStatusError is a non-success answer of the API server.
type apiStatusError struct {
	code int
	body string
}

func (e *apiStatusError) Error() string {
	return fmt.Sprintf("answered %d %s: %s", e.code, http.StatusText(e.code), e.body)
}

// retriable reports whether another attempt may succeed: transport errors, timeouts, throttling and
// server errors are; a pod that does not exist, a request that is not allowed and an agent that cannot
// be reached (the API server is asked instead) are not.
func retriable(err error) bool {
	if errors.Is(err, errAgentUnreachable) {
		return false
	}
	var se *apiStatusError
	if errors.As(err, &se) {
		return se.code == http.StatusTooManyRequests || se.code >= 500
	}
	return true
}

// Where the plugin read a pod from (Report.PodSource).
const (
	PodSourceAgent = "agent" // the node agent (shunt install-cni), from its watch of the node's pods
	PodSourceAPI   = "api"   // the API server, with the plugin's kubeconfig
)

// AgentTimeout bounds one request to the node agent: an agent that has not answered by then counts
// as unreachable, and the plugin reads the pod from the API server itself.
const (
	AgentTimeout     = 2 * time.Second
	agentDialTimeout = 200 * time.Millisecond
)

// errAgentUnreachable is a node agent that cannot be asked: no socket, nobody listening, no answer in
// time.
var errAgentUnreachable = errors.New("node agent unreachable")

// readPod reads a pod from the node agent at conf.AgentSocket, or — only when the agent cannot be
// reached — from the API server. Any answer of the agent is the answer: a pod it does not find is not
// looked for again. It returns where the pod came from (PodSourceAgent or PodSourceAPI).
func readPod(ctx context.Context, conf *NetConf, namespace, name, uid string) (*Pod, string, error) {
	if conf.AgentSocket != "" {
		pod, err := getPodFromAgent(ctx, conf.AgentSocket, namespace, name, uid)
		if !errors.Is(err, errAgentUnreachable) {
			return pod, PodSourceAgent, err
		}
	}
	pod, err := getPodFromAPI(ctx, conf, namespace, name)
	return pod, PodSourceAPI, err
}

// getPodFromAgent asks the node agent for a pod, retrying with backoff on answers that may change
// (the agent could not read the pod from the API server yet), until ctx expires. An agent that cannot
// be reached is an error wrapping errAgentUnreachable.
func getPodFromAgent(ctx context.Context, socket, namespace, name, uid string) (*Pod, error) {
	client := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: agentDialTimeout}
			return d.DialContext(ctx, "unix", socket)
		}},
		Timeout: AgentTimeout,
	}
	defer client.CloseIdleConnections()
	u := (&url.URL{Scheme: "http", Host: "agent", Path: "/v1/pods/" + namespace + "/" + name,
		RawQuery: url.Values{"uid": {uid}}.Encode()}).String()
	return retrying(ctx, func() (*Pod, error) {
		pod, err := getPodOnce(ctx, client, u)
		var se *apiStatusError
		if err != nil && !errors.As(err, &se) {
			return nil, fmt.Errorf("%w: %s: %w", errAgentUnreachable, socket, err)
		}
		return pod, err
	})
}

// getPodFromAPI reads a pod with one GET, retrying with backoff on errors that may pass, until ctx
// (the api_timeout) expires.
func getPodFromAPI(ctx context.Context, conf *NetConf, namespace, name string) (*Pod, error) {
	cfg, err := restConfig(conf.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = PluginType
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", conf.Kubeconfig, err)
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", conf.Kubeconfig, err)
	}
	u := base.JoinPath("api", "v1", "namespaces", namespace, "pods", name).String()
	return retrying(ctx, func() (*Pod, error) { return getPodOnce(ctx, client, u) })
}

// retrying calls get until it succeeds or fails for good (see retriable), backing off in between,
// until ctx expires.
func retrying(ctx context.Context, get func() (*Pod, error)) (*Pod, error) {
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		pod, err := get()
		if err == nil {
			return pod, nil
		}
		if !retriable(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func getPodOnce(ctx context.Context, client *http.Client, url string) (*Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptBound(ctx))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var st struct {
			Message string `json:"message"`
		}
		msg := string(body)
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		return nil, &apiStatusError{code: resp.StatusCode, body: msg}
	}
	var pod Pod
	if err := json.Unmarshal(body, &pod); err != nil {
		return nil, fmt.Errorf("decode Pod: %w", err)
	}
	return &pod, nil
}

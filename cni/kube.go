package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	return fmt.Sprintf("API server answered %d %s: %s", e.code, http.StatusText(e.code), e.body)
}

// retriable reports whether another attempt may succeed: transport errors, timeouts, throttling and
// server errors are; a pod that does not exist or a request that is not allowed is not.
func retriable(err error) bool {
	var se *apiStatusError
	if errors.As(err, &se) {
		return se.code == http.StatusTooManyRequests || se.code >= 500
	}
	return true
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
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		pod, err := getPodOnce(ctx, client, u)
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
	ctx, cancel := context.WithTimeout(ctx, maxAttempt)
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

package kube

import (
	"bufio"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// auditPolicy records every request on pods, without bodies, once answered. Other resources are not
// recorded: the log stays small and costs the API server next to nothing.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources: [{group: "", resources: ["pods"]}]
- level: None
`

// writeAuditPolicy writes the policy into dir and returns the flags that log by it to AuditLog.
func writeAuditPolicy(dir string) (map[string]string, error) {
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	return map[string]string{
		"audit-policy-file": policy,
		"audit-log-path":    filepath.Join(dir, "audit.log"),
		"audit-log-mode":    "blocking", // an event is in the file when its response is sent
		"audit-log-format":  "json",
	}, nil
}

// AuditEvent is a request on pods as the API server's audit log records it.
type AuditEvent struct {
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	User      struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource  string `json:"resource"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	Stage string `json:"stage"`
}

// PodRequests returns the requests on pods the API server answered so far, in order (a watch is
// there when it ends), read from its audit log.
func (c *Cluster) PodRequests(t testing.TB) []AuditEvent {
	t.Helper()
	f, err := os.Open(filepath.Join(c.dir, "audit.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var e AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // a line being written
		}
		if e.ObjectRef.Resource == "pods" && e.Stage != "ResponseStarted" {
			out = append(out, e)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

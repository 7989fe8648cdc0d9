package install

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"k8s.io/apimachinery/pkg/runtime"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/shim"
)

// maxRequest bounds a command's request: its configuration with the previous plugins' result.
const maxRequest = 16 << 20

// agentHandler serves the agent's socket: the node's pods (GET /v1/pods/…) and, when the agent runs
// them, the shim's commands (POST /v1/cni).
func (in *Installer) agentHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/pods/", in.pods.handler())
	mux.HandleFunc("POST "+shim.Path, in.serveCNI)
	return mux
}

// serveCNI runs one of the shim's commands in this process, as the standalone plugin would run it,
// reading the pod from the agent's watch. An agent that does not run commands answers 404: the shim
// then runs the standalone plugin.
func (in *Installer) serveCNI(w http.ResponseWriter, r *http.Request) {
	if in.notServing != "" {
		writeStatus(w, http.StatusNotFound, "the node agent does not run CNI commands: "+in.notServing)
		return
	}
	var req shim.Request
	if err := json.NewDecoder(io.LimitReader(r.Body, maxRequest)).Decode(&req); err != nil {
		writeStatus(w, http.StatusBadRequest, "decode command: "+err.Error())
		return
	}
	// The pod's namespace as this process sees it: a path the agent's mounts do not show (no
	// /var/run/netns mount, no propagation from the host) is the standalone plugin's, which runs in
	// the runtime's mount namespace.
	if req.Netns != "" {
		if why := notANetNS(req.Netns); why != "" {
			in.log.Warn("a pod's network namespace is not visible to the agent: the standalone plugin runs its command",
				"netns", req.Netns, "reason", why)
			writeStatus(w, http.StatusNotFound, "the node agent does not see the network namespace "+req.Netns+": "+why)
			return
		}
	}
	p := cni.Plugin{InAgent: true, GetPod: in.podForPlugin}
	out, err := json.Marshal(p.Run(&req))
	if err != nil {
		writeStatus(w, http.StatusInternalServerError, err.Error())
		return
	}
	// A Content-Length, never chunked: the shim reads answers without net/http (see shim.Do).
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	_, _ = w.Write(out)
}

// podForPlugin is the plugin's pod lookup when the agent runs a command: its watch of the node's pods,
// or one read from the API server for a pod it does not hold yet.
func (in *Installer) podForPlugin(_ context.Context, _ *cni.NetConf, namespace, name, uid string) (*cni.Pod, string, error) {
	u, source, err := in.pods.get(namespace, name, uid)
	if in.metrics != nil {
		outcome := outcomeFound
		if err != nil {
			outcome = outcomeError
		}
		in.metrics.agentRequests.WithLabelValues(source, outcome).Inc()
	}
	if err != nil {
		return nil, cni.PodSourceAgent, err
	}
	var pod cni.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pod); err != nil {
		return nil, cni.PodSourceAgent, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return &pod, cni.PodSourceAgent, nil
}

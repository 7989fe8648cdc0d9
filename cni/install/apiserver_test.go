package install

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

// installerRole is the DaemonSet's ClusterRole: what the installer may do, and the plugin (which
// shares its service account) read.
var installerRole = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
	// patch: label mode only.
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "delete", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
}

// TestAgainstAPIServer runs the installer as its service account, with the DaemonSet's RBAC, against
// a real kube-apiserver: the plugin's kubeconfig reaches it, the startup taint goes, and pods that
// started without rules are repaired, with an Event each.
func TestAgainstAPIServer(t *testing.T) {
	c := kube.Start(t)
	ctx := t.Context()
	cs := c.Client

	const saNS, saName = "kube-system", "shunt-cni"
	token := c.TokenFor(t, saNS, saName)
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: saName}, Rules: installerRole}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: saName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: saName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: saNS, Name: saName}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	saConfig, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigFor(t, token))
	if err != nil {
		t.Fatal(err)
	}
	saClient := kubernetes.NewForConfigOrDie(saConfig)
	waitFor(t, "the RBAC binding takes effect", func() bool {
		_, err := saClient.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		return err == nil
	})
	client, err := dynamic.NewForConfig(saConfig)
	if err != nil {
		t.Fatal(err)
	}

	const appNS = "app"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	otherTaint := corev1.Taint{Key: "example.com/dedicated", Value: "mesh", Effect: corev1.TaintEffectNoSchedule}
	for _, name := range []string{"node-1", "node-2"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{
				{Key: DefaultTaintKey, Effect: corev1.TaintEffectNoSchedule}, otherTaint,
			}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// mkPod creates a pod on node; validationExit >= 0 sets its istio-validation init container's
	// exit code, as the kubelet would.
	mkPod := func(name, node string, validationExit int32) *corev1.Pod {
		t.Helper()
		p, err := cs.CoreV1().Pods(appNS).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS},
			Spec: corev1.PodSpec{
				NodeName:       node,
				InitContainers: []corev1.Container{{Name: "istio-validation", Image: "example.invalid/proxy:1"}},
				Containers:     []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if validationExit < 0 {
			return p
		}
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{
			Name:  "istio-validation",
			Image: "example.invalid/proxy:1",
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: validationExit, Reason: "Error", StartedAt: metav1.Now(), FinishedAt: metav1.Now()}},
		}}
		if p, err = cs.CoreV1().Pods(appNS).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// repaired reports whether the pod was deleted (it stays, terminating: there is no kubelet) or
	// labeled.
	repaired := func(name string) bool {
		p, err := cs.CoreV1().Pods(appNS).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true
		}
		if err != nil {
			t.Fatal(err)
		}
		return p.DeletionTimestamp != nil || p.Labels[DefaultRepairLabelKey] == "needed"
	}
	repairEvents := func(pod string) []corev1.Event {
		list, err := cs.CoreV1().Events(appNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []corev1.Event
		for _, e := range list.Items {
			if e.InvolvedObject.Name == pod && e.Reason == repairEventReason {
				out = append(out, e)
			}
		}
		return out
	}
	untainted := func(node string) bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The API server's admission may add taints of its own (node.kubernetes.io/not-ready).
		return !slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == DefaultTaintKey }) &&
			slices.Contains(n.Spec.Taints, otherTaint)
	}

	run := func(t *testing.T, node, mode string) (*testNode, func() error) {
		n, cfg := newTestNode(t)
		writeFile(t, cfg.TokenFile, token, 0o600)
		writeFile(t, cfg.CAFile, string(c.CAData), 0o644)
		cfg.APIServer, cfg.Client, cfg.NodeName, cfg.Repair.Mode = c.URL, client, node, mode
		writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
		in, stop := start(t, cfg)
		waitReady(t, in)
		// The plugin's kubeconfig reaches the API server as the service account.
		pc, err := clientcmd.BuildConfigFromFlags("", n.path(DefaultKubeconfigName))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kubernetes.NewForConfigOrDie(pc).CoreV1().Pods(appNS).List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("the plugin's kubeconfig does not work: %v", err)
		}
		return n, stop
	}

	t.Run("delete", func(t *testing.T) {
		mkPod("broken", "node-1", 126)
		mkPod("healthy", "node-1", 0)
		mkPod("elsewhere", "node-2", 126)
		checked := mkPod("check-failed", "node-1", -1)
		n, stop := run(t, "node-1", RepairDelete)
		waitFor(t, "node-1's startup taint is removed", func() bool { return untainted("node-1") })
		waitFor(t, "the broken pod is deleted", func() bool { return repaired("broken") })
		// A pod created while the installer watches.
		mkPod("broken-later", "node-1", 126)
		waitFor(t, "the pod created later is deleted", func() bool { return repaired("broken-later") })
		if err := cni.SendReport(n.socket, cni.Report{Command: "CHECK", Namespace: appNS, Name: checked.Name,
			UID: string(checked.UID), Outcome: cni.OutcomeCheckFailed, Reason: "rules differ"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pod whose CHECK failed is deleted", func() bool { return repaired("check-failed") })
		for _, p := range []string{"broken", "broken-later", "check-failed"} {
			waitFor(t, "an event on "+p, func() bool { return len(repairEvents(p)) == 1 })
			e := repairEvents(p)[0]
			if e.Type != corev1.EventTypeWarning || !strings.Contains(e.Message, "shunt deleted the pod") {
				t.Errorf("event on %s: %s %q", p, e.Type, e.Message)
			}
		}
		if repaired("healthy") || repaired("elsewhere") {
			t.Error("a healthy pod, or a pod on another node, was repaired")
		}
		if untainted("node-2") {
			t.Error("another node's taint was removed")
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("label", func(t *testing.T) {
		mkPod("broken-2", "node-2", 126)
		_, stop := run(t, "node-2", RepairLabel)
		waitFor(t, "node-2's startup taint is removed", func() bool { return untainted("node-2") })
		waitFor(t, "the pod on node-2 is labeled", func() bool { return repaired("broken-2") })
		p, err := cs.CoreV1().Pods(appNS).Get(ctx, "elsewhere", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pod on node-2 that failed earlier is labeled", func() bool { return repaired(p.Name) })
		waitFor(t, "an event on broken-2", func() bool { return len(repairEvents("broken-2")) == 1 })
		if msg := repairEvents("broken-2")[0].Message; !strings.Contains(msg, "labeled the pod "+DefaultRepairLabelKey+"=needed") {
			t.Errorf("event message %q", msg)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

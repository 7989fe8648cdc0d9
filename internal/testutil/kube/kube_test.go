package kube

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestCluster(t *testing.T) {
	c := Start(t)
	ctx := t.Context()
	cs := c.Client

	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != Version {
		t.Errorf("server version %s, want %s", v.GitVersion, Version)
	}

	const ns = "shunt-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	patch := []byte(`{"spec":{"taints":[{"key":"shunt.io/not-ready","effect":"NoSchedule"}]}}`)
	patched, err := cs.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("patch node taints: %v", err)
	}
	if !slices.ContainsFunc(patched.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == "shunt.io/not-ready" }) {
		t.Errorf("node taints after patch = %v, want shunt.io/not-ready among them", patched.Spec.Taints)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:   node.Name,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	got, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if got.Spec.NodeName != node.Name || got.Status.Phase != corev1.PodPending {
		t.Errorf("pod node %q phase %q, want %q %q", got.Spec.NodeName, got.Status.Phase, node.Name, corev1.PodPending)
	}
	// The audit log holds both requests, by the admin.
	var audited []string
	for _, e := range c.PodRequests(t) {
		if e.ObjectRef.Name == pod.Name && e.User.Username == "admin" && e.ResponseStatus.Code/100 == 2 {
			audited = append(audited, e.Verb)
		}
	}
	if !slices.Equal(audited, []string{"create", "get"}) {
		t.Errorf("audited requests on the pod: %q, want create and get", audited)
	}

	event := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "app-", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name, UID: got.UID},
		Reason:         "Redirected",
		Message:        "traffic redirected",
		Type:           corev1.EventTypeNormal,
		Source:         corev1.EventSource{Component: "shunt"},
	}
	if _, err := cs.CoreV1().Events(ns).Create(ctx, event, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create event: %v", err)
	}

	// A pod bound to a node waits for its kubelet to confirm a graceful
	// delete; there is none, so delete at once.
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get deleted pod: %v, want NotFound", err)
	}

	c.Stop()
	c.Stop() // idempotent
	getCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Get(getCtx, ns, metav1.GetOptions{}); err == nil {
		t.Error("get namespace after Stop succeeded, want an error")
	} else {
		t.Logf("after Stop: %v", err)
	}
}

func TestTokenFor(t *testing.T) {
	c := Start(t)
	ctx := t.Context()

	const ns, sa = "kube-system", "shunt-cni"
	token := c.TokenFor(t, ns, sa)
	// What a DaemonSet gets: read pods, nothing else.
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "shunt-cni"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create clusterrole: %v", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "shunt-cni"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create clusterrolebinding: %v", err)
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigFor(t, token))
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The RBAC authorizer sees the binding once its informer has it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err = cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil || !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("list pods as %s/%s: %v", ns, sa, err)
	}

	_, err = cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("list nodes as %s/%s: %v, want Forbidden", ns, sa, err)
	}
}

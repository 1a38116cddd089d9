//go:build tools

// Package cluster pins the Kubernetes commands that scripts/cluster.sh builds: the real control plane and
// node of the e2e tier, at the version go.mod names. Nothing here is compiled into Toolwarden.
package cluster

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

//go:build tools

// Package tools pins the CSI sidecars that tests/env/build builds: the external provisioner, the
// external snapshotter's sidecar and its snapshot-controller.
package tools

import (
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)

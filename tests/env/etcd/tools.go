//go:build tools

// Package tools pins the etcd command that tests/env/up builds.
package tools

import _ "go.etcd.io/etcd/server/v3"

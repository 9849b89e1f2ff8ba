//go:build tools

// Package tools pins the restic command that benches/tools/install builds (restic-0.18).
package tools

import _ "github.com/restic/restic/cmd/restic"

//go:build tools

// Package tools pins the kopia command that benches/tools/install builds.
package tools

import _ "github.com/kopia/kopia"

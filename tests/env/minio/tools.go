//go:build tools

// Package tools pins the MinIO command that tests/env/up builds.
package tools

import _ "github.com/minio/minio"

//go:build tools

// Package tools pins the CNCF distribution registry, the real OCI registry the tests push
// probe modules to and the controller pulls them from.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"

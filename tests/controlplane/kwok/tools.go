//go:build tools

// Package tools pins kwok, the node agent of the test control plane: it
// makes pods on fake nodes Running and serves their exec and port-forward.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"

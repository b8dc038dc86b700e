// Package export_wit_world implements the exports of the `activity-probe`
// world (wit-bindgen's Go generator names the package and calls Info and
// Probe from the generated main package).
//
// The probe reads code-server's (VS Code in the browser) /healthz, which
// reports "alive" while the editor is in use and the time of its last
// heartbeat otherwise. code-server does not count /healthz itself as activity.
package export_wit_world

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	witTypes "go.bytecodealliance.org/pkg/wit/types"

	plog "wit_component/workspace_culler_probe_log"
	. "wit_component/workspace_culler_probe_types"
)

// The contract's timestamp format: RFC 3339, UTC, milliseconds.
const rfc3339Millis = "2006-01-02T15:04:05.000Z07:00"

type config struct {
	// The WorkspaceKind's port id code-server listens on (Kubeflow's codeserver kind: "codeserver").
	PortID string `json:"portId"`
	// Path code-server is served under (empty when the proxy removes the prefix).
	PathPrefix string `json:"pathPrefix"`
}

// What code-server's /healthz answers.
type health struct {
	Status        string `json:"status"`
	LastHeartbeat int64  `json:"lastHeartbeat"`
}

func Info() ProbeInfo {
	return ProbeInfo{
		Name:         "code-server",
		Version:      "0.1.0",
		Description:  "Reads code-server's /healthz: alive, or the time of its last heartbeat",
		Capabilities: []string{"http", "log"},
	}
}

func fail(format string, args ...any) witTypes.Result[string, ProbeError] {
	return witTypes.Err[string, ProbeError](MakeProbeErrorFailure(fmt.Sprintf(format, args...)))
}

func reply(result map[string]any) witTypes.Result[string, ProbeError] {
	text, err := json.Marshal(result)
	if err != nil {
		return fail("code-server probe: %v", err)
	}
	return witTypes.Ok[string, ProbeError](string(text))
}

func Probe(ws Workspace, rawConfig string) witTypes.Result[string, ProbeError] {
	cfg := config{PortID: "codeserver"}
	if strings.TrimSpace(rawConfig) != "" {
		decoder := json.NewDecoder(strings.NewReader(rawConfig))
		decoder.DisallowUnknownFields()
		if err := decoder.Decode(&cfg); err != nil {
			return fail("code-server probe config is invalid: %v", err)
		}
	}
	var port uint16
	known := []string{}
	for _, p := range ws.Ports {
		known = append(known, p.Id)
		if p.Id == cfg.PortID {
			port = p.Number
		}
	}
	if port == 0 {
		return fail("port id %q does not resolve to a port of this workspace (known: %s)", cfg.PortID, strings.Join(known, ", "))
	}
	host := ws.PodIp
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 address
	}
	authority := fmt.Sprintf("%s:%d", host, port)
	path := strings.TrimRight(cfg.PathPrefix, "/") + "/healthz"
	url := "http://" + authority + path
	status, body, err := httpGet(authority, path)
	if err != nil {
		return fail("code-server probe: GET %s: %v", url, err)
	}
	if status != 200 {
		return fail("code-server probe: HTTP %d from %s", status, url)
	}
	var h health
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&h); err != nil {
		return fail("code-server probe: %s did not answer JSON: %v", url, err)
	}
	plog.Log(plog.Level_Debug, fmt.Sprintf("code-server status %q, last heartbeat %d", h.Status, h.LastHeartbeat))
	switch {
	case h.Status == "alive":
		return reply(map[string]any{"has_activity": true})
	case h.LastHeartbeat > 0:
		return reply(map[string]any{"last_activity": time.UnixMilli(h.LastHeartbeat).UTC().Format(rfc3339Millis)})
	default:
		// Never used since it started: the controller's idle clock decides.
		return reply(map[string]any{"last_activity": nil})
	}
}

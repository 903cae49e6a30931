package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"regexp"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// createPath matches the Docker API's container-create call, with or without a version prefix.
var createPath = regexp.MustCompile(`^(/v[0-9.]+)?/containers/create$`)

// startDockerProxy serves the Docker Engine API on listenPath, forwarding every call to the
// engine at dockerEndpoint unchanged except one: a container create whose HostConfig asks for a
// negative OomScoreAdj gets 0 instead. dockershim gives every sandbox -998 and kubelet gives
// Guaranteed Pods' containers -997; lowering oom_score_adj needs CAP_SYS_RESOURCE, which this
// machine's sandbox does not grant even to root, so runc would fail to start those containers
// ("can't get final child's PID from pipe"). Returns the endpoint to hand to dockershim.
func startDockerProxy(listenPath, dockerEndpoint string) (string, error) {
	backend := strings.TrimPrefix(dockerEndpoint, "unix://")
	if strings.Contains(backend, "://") {
		return "", fmt.Errorf("--docker-endpoint %s: only unix sockets are supported", dockerEndpoint)
	}
	if err := os.Remove(listenPath); err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("removing stale %s: %w", listenPath, err)
	}
	listener, err := net.Listen("unix", listenPath)
	if err != nil {
		return "", fmt.Errorf("listening on %s: %w", listenPath, err)
	}
	if err := os.Chmod(listenPath, 0o600); err != nil {
		return "", fmt.Errorf("chmod %s: %w", listenPath, err)
	}
	proxy := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme = "http"
			r.URL.Host = "docker"
			if r.Method == http.MethodPost && createPath.MatchString(r.URL.Path) {
				clampOOMScoreAdj(r)
			}
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", backend)
			},
			DisableCompression: true,
		},
		// Logs and attach are streams: pass every byte on at once.
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	go func() {
		if err := http.Serve(listener, proxy); err != nil {
			klog.ErrorS(err, "Docker API proxy stopped")
			os.Exit(1)
		}
	}()
	return "unix://" + listenPath, nil
}

// clampOOMScoreAdj rewrites a container-create body so HostConfig.OomScoreAdj is not negative.
// Bodies it cannot parse go through untouched (the engine will report the problem).
func clampOOMScoreAdj(r *http.Request) {
	if r.Body == nil {
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	setBody := func(b []byte) {
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.Header.Set("Content-Length", strconv.Itoa(len(b)))
	}
	if err != nil {
		setBody(body)
		return
	}
	var create map[string]interface{}
	decoder := json.NewDecoder(bytes.NewReader(body))
	decoder.UseNumber() // keep large integers (memory limits) exact
	if decoder.Decode(&create) != nil {
		setBody(body)
		return
	}
	hostConfig, ok := create["HostConfig"].(map[string]interface{})
	if !ok {
		setBody(body)
		return
	}
	adj, ok := hostConfig["OomScoreAdj"].(json.Number)
	if !ok {
		setBody(body)
		return
	}
	if value, err := adj.Int64(); err != nil || value >= 0 {
		setBody(body)
		return
	}
	hostConfig["OomScoreAdj"] = json.Number("0")
	rewritten, err := json.Marshal(create)
	if err != nil {
		setBody(body)
		return
	}
	klog.V(2).InfoS("Container create: OomScoreAdj raised to 0 (no CAP_SYS_RESOURCE)", "requested", adj.String(), "name", r.URL.Query().Get("name"))
	setBody(rewritten)
}

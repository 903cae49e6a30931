// Command clonepool-dockershim is the CRI runtime of the clonepool Kubernetes node: it makes
// every Pod a set of real Docker Engine containers (visible to `docker ps`, named k8s_*), the
// way kubelet's built-in dockershim did up to Kubernetes v1.23.
//
// The runtime itself is that dockershim (k8s.io/kubernetes v1.23.17, pkg/kubelet/dockershim,
// the code cri-dockerd was forked from), which speaks CRI runtime.v1alpha2. Kubelet v1.34 only
// speaks runtime.v1, whose messages are wire-compatible with v1alpha2 (v1 started as a copy
// of it and only added fields since). So this program serves both service names: each unary
// call to runtime.v1.{RuntimeService,ImageService}/M (or the v1alpha2 one) is decoded into the
// v1alpha2 request type of method M and handed to dockershim; the reply is encoded back. Calls
// dockershim does not know (RPCs added in v1, e.g. RuntimeConfig, GetContainerEvents) answer
// Unimplemented, which kubelet v1.34 handles by falling back to its own configuration.
//
// With --docker-proxy-socket, dockershim's Docker API calls go through a small proxy
// (dockerproxy.go) that raises negative OomScoreAdj values to 0 on hosts where root lacks
// CAP_SYS_RESOURCE.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
	"k8s.io/klog/v2"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	"k8s.io/kubernetes/pkg/kubelet/cri/streaming"
	"k8s.io/kubernetes/pkg/kubelet/dockershim"
	"k8s.io/kubernetes/pkg/kubelet/util"
)

// maxMsgSize matches dockershim's own gRPC server (16 MiB).
const maxMsgSize = 16 << 20

type options struct {
	listen          string
	dockerEndpoint  string
	dockerProxy     string
	sandboxImage    string
	rootDir         string
	cniBinDir       string
	cniConfDir      string
	cniCacheDir     string
	cgroupDriver    string
	hairpinMode     string
	streamingAddr   string
	requestTimeout  time.Duration
	pullProgressDue time.Duration
}

func parseOptions() options {
	var o options
	flag.StringVar(&o.listen, "listen", "unix:///run/clonepool-dockershim.sock", "CRI endpoint to serve (unix socket)")
	flag.StringVar(&o.dockerEndpoint, "docker-endpoint", "unix:///var/run/docker.sock", "Docker Engine API endpoint")
	flag.StringVar(&o.dockerProxy, "docker-proxy-socket", "", "serve dockershim's Docker API calls through a proxy on this unix socket that raises negative OomScoreAdj to 0 (for hosts where root lacks CAP_SYS_RESOURCE); empty: talk to Docker directly")
	flag.StringVar(&o.sandboxImage, "pod-infra-container-image", "", "image of each Pod's sandbox (pause) container; must exist locally")
	flag.StringVar(&o.rootDir, "root-dir", "/var/lib/clonepool-dockershim", "dockershim state (sandbox checkpoints)")
	flag.StringVar(&o.cniBinDir, "cni-bin-dir", "/usr/lib/cni", "comma-separated CNI plugin directories")
	flag.StringVar(&o.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "CNI network configuration directory")
	flag.StringVar(&o.cniCacheDir, "cni-cache-dir", "/var/lib/cni/cache", "CNI cache directory")
	flag.StringVar(&o.cgroupDriver, "cgroup-driver", "cgroupfs", "cgroup driver (must match kubelet and Docker)")
	flag.StringVar(&o.hairpinMode, "hairpin-mode", string(kubeletconfig.HairpinVeth), "hairpin mode handed to CNI")
	flag.StringVar(&o.streamingAddr, "streaming-addr", "127.0.0.1:0", "address of the exec/attach/port-forward streaming server")
	flag.DurationVar(&o.requestTimeout, "runtime-request-timeout", 2*time.Minute, "timeout of Docker API requests")
	flag.DurationVar(&o.pullProgressDue, "image-pull-progress-deadline", time.Minute, "cancel a pull that shows no progress for this long")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	return o
}

func main() {
	o := parseOptions()
	if o.sandboxImage == "" {
		fmt.Fprintln(os.Stderr, "clonepool-dockershim: --pod-infra-container-image is required")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		klog.ErrorS(err, "clonepool-dockershim failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(o options) error {
	dockerEndpoint := o.dockerEndpoint
	if o.dockerProxy != "" {
		proxied, err := startDockerProxy(o.dockerProxy, o.dockerEndpoint)
		if err != nil {
			return fmt.Errorf("starting the Docker API proxy: %w", err)
		}
		klog.InfoS("Docker API calls go through the OomScoreAdj proxy", "proxy", o.dockerProxy, "engine", o.dockerEndpoint)
		dockerEndpoint = proxied
	}
	streamingConfig := streaming.DefaultConfig
	streamingConfig.Addr = o.streamingAddr
	ds, err := dockershim.NewDockerService(
		&dockershim.ClientConfig{
			DockerEndpoint:            dockerEndpoint,
			RuntimeRequestTimeout:     o.requestTimeout,
			ImagePullProgressDeadline: o.pullProgressDue,
		},
		o.sandboxImage,
		&streamingConfig,
		&dockershim.NetworkPluginSettings{
			HairpinMode:        kubeletconfig.HairpinMode(o.hairpinMode),
			PluginName:         "cni",
			PluginBinDirString: o.cniBinDir,
			PluginConfDir:      o.cniConfDir,
			PluginCacheDir:     o.cniCacheDir,
		},
		"", // runtime cgroups: leave dockerd where it is
		o.cgroupDriver,
		o.rootDir,
	)
	if err != nil {
		return fmt.Errorf("creating the docker service: %w", err)
	}
	if err := ds.Start(); err != nil {
		return fmt.Errorf("starting the docker service: %w", err)
	}
	listener, err := util.CreateListener(o.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.listen, err)
	}
	server := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
		grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(newDispatcher(ds).handle),
	)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		klog.InfoS("Stopping on signal", "signal", sig.String())
		server.Stop()
	}()
	klog.InfoS("Serving CRI runtime.v1 and runtime.v1alpha2", "endpoint", o.listen, "sandboxImage", o.sandboxImage)
	return server.Serve(listener)
}

// frame is one undecoded gRPC message.
type frame struct{ payload []byte }

// rawCodec hands message bytes through untouched; the dispatcher decodes them itself.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return f.payload, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	f.payload = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// dispatcher routes CRI calls by method name to dockershim's v1alpha2 implementation.
type dispatcher struct {
	target   reflect.Value
	services map[string]reflect.Type // gRPC service name -> v1alpha2 server interface
}

func newDispatcher(ds dockershim.DockerService) *dispatcher {
	runtimeService := reflect.TypeOf((*runtimeapi.RuntimeServiceServer)(nil)).Elem()
	imageService := reflect.TypeOf((*runtimeapi.ImageServiceServer)(nil)).Elem()
	return &dispatcher{
		target: reflect.ValueOf(ds),
		services: map[string]reflect.Type{
			"runtime.v1.RuntimeService":       runtimeService,
			"runtime.v1.ImageService":         imageService,
			"runtime.v1alpha2.RuntimeService": runtimeService,
			"runtime.v1alpha2.ImageService":   imageService,
		},
	}
}

var (
	contextType = reflect.TypeOf((*context.Context)(nil)).Elem()
	errorType   = reflect.TypeOf((*error)(nil)).Elem()
)

func (d *dispatcher) handle(_ interface{}, stream grpc.ServerStream) error {
	fullMethod, ok := grpc.MethodFromServerStream(stream)
	if !ok {
		return status.Error(codes.Internal, "no method name on the stream")
	}
	service, method, ok := splitMethod(fullMethod)
	if !ok {
		return status.Errorf(codes.Unimplemented, "malformed method %q", fullMethod)
	}
	iface, known := d.services[service]
	if !known {
		return status.Errorf(codes.Unimplemented, "unknown service %s", service)
	}
	if _, declared := iface.MethodByName(method); !declared {
		klog.V(4).InfoS("CRI method not implemented by dockershim", "method", fullMethod)
		return status.Errorf(codes.Unimplemented, "method %s not implemented by dockershim", method)
	}
	fn := d.target.MethodByName(method)
	ft := fn.Type()
	if ft.NumIn() != 2 || ft.In(0) != contextType || ft.NumOut() != 2 || ft.Out(1) != errorType {
		return status.Errorf(codes.Unimplemented, "method %s is not a unary call", method)
	}

	var in frame
	if err := stream.RecvMsg(&in); err != nil {
		return err
	}
	req, ok := reflect.New(ft.In(1).Elem()).Interface().(gogoMessage)
	if !ok {
		return status.Errorf(codes.Internal, "request type of %s is not a protobuf message", method)
	}
	if err := req.Unmarshal(in.payload); err != nil {
		return status.Errorf(codes.InvalidArgument, "decoding %s request: %v", method, err)
	}
	out := fn.Call([]reflect.Value{reflect.ValueOf(stream.Context()), reflect.ValueOf(req)})
	if errValue := out[1].Interface(); errValue != nil {
		err := errValue.(error)
		if _, isStatus := status.FromError(err); isStatus {
			return err
		}
		return status.Error(codes.Unknown, err.Error())
	}
	resp, ok := out[0].Interface().(gogoMessage)
	if !ok || out[0].IsNil() {
		return status.Errorf(codes.Internal, "%s returned no response", method)
	}
	payload, err := resp.Marshal()
	if err != nil {
		return status.Errorf(codes.Internal, "encoding %s response: %v", method, err)
	}
	return stream.SendMsg(&frame{payload: payload})
}

// splitMethod splits "/pkg.Service/Method" into its service and method names.
func splitMethod(full string) (string, string, bool) {
	full = strings.TrimPrefix(full, "/")
	i := strings.LastIndex(full, "/")
	if i <= 0 || i == len(full)-1 {
		return "", "", false
	}
	return full[:i], full[i+1:], true
}

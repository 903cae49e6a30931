# Shared settings and helpers of scripts/kube-up, scripts/kube-down and scripts/kube/build-binaries.
# Sourced, not run. Every setting can be overridden from the environment.
# shellcheck shell=bash disable=SC2034

kube_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned versions. The go.mod/go.sum files under build/ pin every module; these name them.
K8S_VERSION="v1.34.4"          # build/kubernetes/go.mod
ETCD_VERSION="v3.6.8"          # build/etcd/go.mod
HELM_VERSION="v3.19.5"         # build/helm/go.mod
DOCKERSHIM_K8S_VERSION="v1.23.17" # build/dockershim/go.mod (kubelet's dockershim, last shipped in v1.23)

GO="${CLONEPOOL_KUBE_GO:-/usr/local/go/bin/go}"

# Where things live.
KUBE_CACHE="${CLONEPOOL_KUBE_CACHE:-/var/cache/clonepool/kube}"
KUBE_BIN="$KUBE_CACHE/bin"
KUBE_STATE="${CLONEPOOL_KUBE_DIR:-/var/lib/clonepool-kube}"

# Network layout. Docker uses 172.17.0.0/16; the clonepool docker network 192.168.64.0/20.
POD_CIDR="${CLONEPOOL_KUBE_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${CLONEPOOL_KUBE_SERVICE_CIDR:-10.96.0.0/24}"
SERVICE_IP="${CLONEPOOL_KUBE_SERVICE_IP:-10.96.0.1}" # first address of SERVICE_CIDR: the kubernetes Service
CNI_BRIDGE="${CLONEPOOL_KUBE_CNI_BRIDGE:-cni-kube0}"
API_PORT="${CLONEPOOL_KUBE_API_PORT:-6443}"
ETCD_CLIENT_PORT="${CLONEPOOL_KUBE_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${CLONEPOOL_KUBE_ETCD_PEER_PORT:-2380}"
CLUSTER_DOMAIN="cluster.local"

# Images built locally (there is no registry).
PAUSE_IMAGE_REPO="clonepool-kube/pause"
CHECK_IMAGE_REPO="clonepool-kube/busybox"

step() { printf '\n==> %s\n' "$*" >&2; }
say() { echo "${KUBE_SCRIPT:-kube}: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# hash_of FILE...: a short sha256 over the files' contents (for cache keys and image tags).
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# component_binary NAME: the cached binary a component runs.
component_binary() {
    case "$1" in
        dockershim) echo "$KUBE_BIN/clonepool-dockershim" ;;
        *) echo "$KUBE_BIN/$1" ;;
    esac
}

# component_running NAME: true when $KUBE_STATE/run/NAME.pid names a live process of its binary.
component_running() {
    local pid_file="$KUBE_STATE/run/$1.pid" pid exe want
    [ -f "$pid_file" ] || return 1
    pid="$(cat "$pid_file")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    want="$(component_binary "$1")"
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    [ "$exe" = "$want" ] || [ "$exe" = "$want (deleted)" ]
}

# stop_component NAME: SIGTERM, then SIGKILL after a grace period; removes the pid file.
stop_component() {
    local name="$1" pid_file="$KUBE_STATE/run/$1.pid" pid
    if component_running "$name"; then
        pid="$(cat "$pid_file")"
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within 10s; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pid_file"
}

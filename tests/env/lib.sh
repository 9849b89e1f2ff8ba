# Shared by tests/env/{build,up,down}: where things live and which ports they use.
# Sourced, not run.

ENV_SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Everything built or started lives outside the clone, so that a fresh clone on a warm machine
# reuses it and `git clean` never throws away a 20-minute Kubernetes build.
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
SERVERS_DIR="$FERRY_CACHE/servers"
RUN_DIR="${FERRY_TEST_RUN_DIR:-$FERRY_CACHE/env}"
ENV_FILE="$RUN_DIR/test.env"

ETCD_PORT="${FERRY_TEST_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${FERRY_TEST_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${FERRY_TEST_APISERVER_PORT:-26443}"
# A second, empty cluster (its own keys in the same etcd) for recovery into a new cluster.
RECOVERY_APISERVER_PORT="${FERRY_TEST_RECOVERY_APISERVER_PORT:-26444}"
MINIO_PORT="${FERRY_TEST_MINIO_PORT:-29000}"
MINIO_CONSOLE_PORT="${FERRY_TEST_MINIO_CONSOLE_PORT:-29001}"
MOTO_PORT="${FERRY_TEST_MOTO_PORT:-25000}"
# The node (tests/env/node-up): every one of its servers listens on 127.0.0.1 too.
KUBELET_PORT="${FERRY_TEST_KUBELET_PORT:-20250}"
KUBELET_HEALTHZ_PORT="${FERRY_TEST_KUBELET_HEALTHZ_PORT:-20248}"
KUBE_PROXY_METRICS_PORT="${FERRY_TEST_KUBE_PROXY_METRICS_PORT:-20249}"
KUBE_PROXY_HEALTHZ_PORT="${FERRY_TEST_KUBE_PROXY_HEALTHZ_PORT:-20256}"
SCHEDULER_PORT="${FERRY_TEST_SCHEDULER_PORT:-20259}"
CONTAINERD_STREAM_PORT="${FERRY_TEST_CONTAINERD_STREAM_PORT:-20010}"

S3_BUCKET="ferry-test"
S3_REGION="us-east-1"
MINIO_USER="ferry-test"
MINIO_PASSWORD="ferry-test-secret"
# NAME:base64 of 32 bytes; a test key in clear, for MinIO's built-in KMS.
MINIO_KMS_KEY="ferry-test-kms:ZmVycnktdGVzdC1rbXMta2V5LTMyLWJ5dGVzLWxvbmc="

# The node's pod network: a bridge that the environment creates, whose gateway address is also the
# node's InternalIP, so that nothing of the node uses the machine's own (eth0) address. Pods reach
# the API servers, MinIO and moto on the gateway address, on the same ports as on loopback.
POD_BRIDGE="${FERRY_TEST_POD_BRIDGE:-ferry0}"
POD_SUBNET_PREFIX="${FERRY_TEST_POD_SUBNET_PREFIX:-10.244.0}" # a /24
POD_SUBNET="$POD_SUBNET_PREFIX.0/24"
NODE_IP="$POD_SUBNET_PREFIX.1"
SERVICE_SUBNET="10.0.0.0/24"
# The node's name must resolve to 127.0.0.1: the API server reaches the kubelet by it, on loopback.
# The machine's host name when it does, else localhost.
default_node_name() {
    local host
    host="$(hostname 2>/dev/null || true)"
    if [[ -n "$host" ]] && [[ "$(getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' | sort -u)" == 127.* ]] \
        && ! getent ahostsv4 "$host" | awk '{print $1}' | grep -qv '^127\.'; then
        printf '%s' "${host,,}"
    else
        printf 'localhost'
    fi
}
NODE_NAME="${FERRY_TEST_NODE_NAME:-$(default_node_name)}"
# The kubelet's root is where deploy/agent.yaml's hostPath expects it. The container runtime's
# root, state and socket are the environment's own.
KUBELET_ROOT="${FERRY_TEST_KUBELET_ROOT:-/var/lib/kubelet}"
NODE_DIR="$RUN_DIR/node"
# Which cluster the node is joined to: main, or recovery while a test has taken it over
# (tests/env/node-up recovery).
NODE_CLUSTER_FILE="$NODE_DIR/cluster"
CONTAINERD_ROOT="$NODE_DIR/containerd/root"
CONTAINERD_STATE="$NODE_DIR/containerd/state"
CONTAINERD_SOCKET="$NODE_DIR/containerd.sock"
CNI_NETWORK="ferry-test"
CNI_BIN_DIR="/usr/lib/cni"
# Images built by tests/env/images/build, by content; imported into the node's containerd by up.
IMAGES_DIR="$FERRY_CACHE/images"
CTR_NAMESPACE="k8s.io"
# Which environment's node owns the machine-wide parts (bridge, iptables, kubelet root): one node
# per machine.
NODE_OWNER_FILE="/run/ferry-test-node.owner"
# Kernel settings the node changes (node-up, the kubelet, kube-proxy); saved by node-up and
# restored by node-down.
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { printf '[ferry env] %s\n' "$*" >&2; }
die() { printf '[ferry env] error: %s\n' "$*" >&2; exit 1; }

# The cache key of a Go-built server: its module version plus a hash of go.mod, go.sum and how it
# is built (RECIPE: commands and link flags), so that any change to what is built lands in a new
# directory instead of silently reusing an old binary.
go_build_key() {
    local dir="$ENV_SRC_DIR/$1"
    local version="$2"
    local recipe="${3:-}"
    local hash
    hash=$( (cat "$dir/go.mod" "$dir/go.sum"; [[ -z "$recipe" ]] || printf '%s' "$recipe") | sha256sum | cut -c1-12)
    printf '%s-%s-%s' "$1" "$version" "$hash"
}

module_version() { # module_version DIR MODULE: the version DIR/go.mod requires
    awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) { print $NF; exit }' "$ENV_SRC_DIR/$1/go.mod"
}

K8S_VERSION="$(module_version k8s k8s.io/kubernetes)"
ETCD_VERSION="$(module_version etcd go.etcd.io/etcd/server/v3)"
MINIO_VERSION="$(module_version minio github.com/minio/minio)"
MOTO_VERSION="$(sed -n 's/^moto\[server\]==//p' "$ENV_SRC_DIR/moto/requirements.txt")"

# Every Kubernetes command comes from the one module, stamped with its release so that each reports
# it (`kubectl version`, the Node's kubeletVersion) instead of v0.0.0-master.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
k8s_ldflags() {
    local minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    local pkg flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    printf '%s' "$flags"
}
K8S_BIN_DIR="$SERVERS_DIR/$(go_build_key k8s "$K8S_VERSION" "${K8S_COMMANDS[*]} $(k8s_ldflags)")"
ETCD_BIN_DIR="$SERVERS_DIR/$(go_build_key etcd "$ETCD_VERSION")"
MINIO_BIN_DIR="$SERVERS_DIR/$(go_build_key minio "$MINIO_VERSION")"
MOTO_VENV="$SERVERS_DIR/moto-$MOTO_VERSION-$(sha256sum "$ENV_SRC_DIR/moto/requirements.txt" | cut -c1-12)"

# The node's CSI storage: the environment's own host-path driver (tests/env/csi: the Go module proxy
# serves neither kubernetes-csi/csi-driver-host-path nor node-driver-registrar, so the driver is
# written here and registers itself with the kubelet), and the sidecars from their published modules
# (tests/env/csi-sidecars). The driver is built from the sources in this clone: their hash is part of
# its cache key.
CSI_DRIVER_NAME="hostpath.csi.ferry.dev"
CSI_CLASS="ferry-csi" # the StorageClass and the VolumeSnapshotClass
CSI_PROVISIONER_VERSION="$(module_version csi-sidecars github.com/kubernetes-csi/external-provisioner/v6)"
CSI_SNAPSHOTTER_VERSION="$(module_version csi-sidecars github.com/kubernetes-csi/external-snapshotter/v8)"
CSI_SIDECARS_BIN_DIR="$SERVERS_DIR/$(go_build_key csi-sidecars "$CSI_PROVISIONER_VERSION-$CSI_SNAPSHOTTER_VERSION")"
CSI_DRIVER_BIN_DIR="$SERVERS_DIR/$(go_build_key csi src "$(cat "$ENV_SRC_DIR"/csi/*.go)")"
# The CSI endpoint, where the kubelet and the sidecars reach the driver, and its registration socket
# (what node-driver-registrar would serve), both under the kubelet's root.
CSI_SOCKET="$KUBELET_ROOT/plugins/$CSI_DRIVER_NAME/csi.sock"
# Volumes and snapshots: beside etcd's data, so that tests/env/down drops them with the objects
# that name them, and moving the node between clusters (node-down, node-up) keeps them.
CSI_DATA_DIR="$RUN_DIR/data/csi"

# ensure_debian_packages: installs the Debian packages the node and the image builds need, when a
# command of theirs is missing (as .ci/run does for curl and openssl).
NODE_PACKAGES=(
    "containerd:containerd" "runc:runc" "$CNI_BIN_DIR/bridge:containernetworking-plugins"
    "iptables:iptables" "conntrack:conntrack" "socat:socat" "debootstrap:debootstrap"
    "mount:mount" "nsenter:util-linux" "mkfs.ext4:e2fsprogs" "ip:iproute2" "curl:curl" "openssl:openssl"
)
ensure_debian_packages() {
    local entry tool missing=()
    for entry in "${NODE_PACKAGES[@]}"; do
        tool="${entry%%:*}"
        if [[ "$tool" == /* ]]; then [[ -e "$tool" ]] && continue; else command -v "$tool" >/dev/null && continue; fi
        missing+=("${entry##*:}")
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "the node needs the Debian packages ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    log "installing Debian packages: ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# --- Certificates and kubeconfigs, from the environment's CA in $RUN_DIR/pki (made by tests/env/up).
PKI="$RUN_DIR/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
# issue_cert NAME SUBJECT [SAN]: a key and a certificate signed by the CA; a server certificate for
# SAN when given, else a client certificate.
issue_cert() {
    local name="$1" subject="$2" san="${3:-}"
    openssl_quiet req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$PKI/$name.key" -out "$PKI/$name.csr"
    local ext="$PKI/$name.ext"
    if [[ -n "$san" ]]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl_quiet x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$ext" -out "$PKI/$name.crt"
}
# write_kubeconfig FILE PORT [CERT_NAME]: a kubeconfig for the API server on 127.0.0.1:PORT, as the
# client of $PKI/CERT_NAME.{crt,key} (default: admin).
write_kubeconfig() {
    local user="${3:-admin}"
    cat >"$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: ferry-test
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: ferry-test-$user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: ferry-test
  context:
    cluster: ferry-test
    user: ferry-test-$user
current-context: ferry-test
KCFG
}

port_in_use() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
# check_ports NAME:PORT...: fails naming the first port that something already listens on.
check_ports() {
    local entry name port
    for entry in "$@"; do
        name="${entry%%:*}" port="${entry##*:}"
        if port_in_use "$port"; then
            local variable="FERRY_TEST_${name^^}_PORT"
            die "port $port for $name is already taken on 127.0.0.1; stop what uses it (ss -ltnp 'sport = :$port') or set ${variable//-/_}"
        fi
    done
}

# start NAME COMMAND...: runs a server in the background with its log ($LOGS/NAME.log) and pid file.
LOGS="$RUN_DIR/logs"
start() {
    local name="$1"
    shift
    nohup "$@" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN_DIR/pids/$name"
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds, or fails naming the server.
wait_for() {
    local name="$1" timeout="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$RUN_DIR/pids/$name")" 2>/dev/null; then
            tail -n 20 "$LOGS/$name.log" >&2
            die "$name exited during start-up; log: $LOGS/$name.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LOGS/$name.log" >&2
            die "$name did not become ready within ${timeout}s; log: $LOGS/$name.log"
        fi
        sleep 0.2
    done
}

# running NAME: whether the server NAME started by up still runs.
running() {
    local pidfile="$RUN_DIR/pids/$1"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# stop NAME...: stops the servers NAME (SIGTERM, then SIGKILL to those still running after 5 s)
# and forgets their pids.
stop() {
    local name pidfile pids=()
    for name in "$@"; do
        pidfile="$RUN_DIR/pids/$name"
        [[ -f "$pidfile" ]] || continue
        pids+=("$(cat "$pidfile")")
        rm -f "$pidfile"
    done
    ((${#pids[@]})) || return 0
    kill "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 5)) pid alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]})) || return 0
        if ((SECONDS >= deadline)); then
            kill -9 "${alive[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
}

# The servers of the control plane, MinIO and moto (tests/env/up), and of the node (tests/env/node-up).
CONTROL_PLANE_SERVERS=(etcd kube-apiserver kube-apiserver-recovery kube-controller-manager kube-controller-manager-recovery minio moto)
# The host's servers that pods reach on the pod network's gateway address ($NODE_IP), same port.
POD_GATEWAY_PORTS=("kube-apiserver:$APISERVER_PORT" "kube-apiserver-recovery:$RECOVERY_APISERVER_PORT" "minio:$MINIO_PORT" "moto:$MOTO_PORT")
NODE_SERVERS=(containerd kube-scheduler kubelet kube-proxy)
CSI_SERVERS=(csi-driver csi-provisioner csi-snapshotter snapshot-controller)
NODE_SERVERS+=("${CSI_SERVERS[@]}")
for entry in "${POD_GATEWAY_PORTS[@]}"; do NODE_SERVERS+=("gateway-${entry%%:*}"); done
# Bumped whenever tests/env/up starts the control plane differently, so that an environment started
# by an older up is restarted instead of being taken as up.
CONTROL_PLANE_LAYOUT=2

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

S3_BUCKET="ferry-test"
S3_REGION="us-east-1"
MINIO_USER="ferry-test"
MINIO_PASSWORD="ferry-test-secret"

log() { printf '[ferry env] %s\n' "$*" >&2; }
die() { printf '[ferry env] error: %s\n' "$*" >&2; exit 1; }

# The cache key of a Go-built server: its module version plus a hash of go.mod and go.sum, so that
# any change to what is built lands in a new directory instead of silently reusing an old binary.
go_build_key() {
    local dir="$ENV_SRC_DIR/$1"
    local version="$2"
    local hash
    hash=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-12)
    printf '%s-%s-%s' "$1" "$version" "$hash"
}

module_version() { # module_version DIR MODULE: the version DIR/go.mod requires
    awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) { print $NF; exit }' "$ENV_SRC_DIR/$1/go.mod"
}

K8S_VERSION="$(module_version k8s k8s.io/kubernetes)"
ETCD_VERSION="$(module_version etcd go.etcd.io/etcd/server/v3)"
MINIO_VERSION="$(module_version minio github.com/minio/minio)"
MOTO_VERSION="$(sed -n 's/^moto\[server\]==//p' "$ENV_SRC_DIR/moto/requirements.txt")"

K8S_BIN_DIR="$SERVERS_DIR/$(go_build_key k8s "$K8S_VERSION")"
ETCD_BIN_DIR="$SERVERS_DIR/$(go_build_key etcd "$ETCD_VERSION")"
MINIO_BIN_DIR="$SERVERS_DIR/$(go_build_key minio "$MINIO_VERSION")"
MOTO_VENV="$SERVERS_DIR/moto-$MOTO_VERSION-$(sha256sum "$ENV_SRC_DIR/moto/requirements.txt" | cut -c1-12)"

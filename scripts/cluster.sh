#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the e2e tier. No container registry and no
# download site is needed: only the Go module proxy and Debian's package archive.
#
#   scripts/cluster.sh build         build (or take from the cache) what `up` needs, start nothing
#   scripts/cluster.sh up            build what is missing, start the cluster, wait until the node is Ready
#   scripts/cluster.sh load FILE...  import OCI image archives (deploy/oci-image.sh) into the node
#   scripts/cluster.sh env           print `export KUBECONFIG=...` (eval it)
#   scripts/cluster.sh status        what runs, and the node
#   scripts/cluster.sh outage kube-apiserver|kubelet SECONDS   stops it that long, then starts it again
#   scripts/cluster.sh down          stop everything and remove every trace (mounts, namespaces, cgroups)
#
# What runs (docs/e2e.md explains each choice):
#   control plane   etcd, kube-apiserver, kube-controller-manager, kube-scheduler: built from the
#                   k8s.io/kubernetes Go module (tests/cluster/go.mod pins the version), run as host
#                   processes on 127.0.0.1 and on the host end of the node's veth.
#   node            containerd + runc + the CNI bridge plugin (Debian packages, extracted, not installed),
#                   kubelet and kube-proxy (nftables mode), in a network namespace of their own and a
#                   mount namespace of their own, so every sysctl, route, nftables rule and mount they
#                   make stays inside them, and `down` leaves the machine as it was.
#   images          the pause image and a busybox tool image built FROM scratch here; Toolwarden's own
#                   images come from deploy/build-images.sh and are loaded with `load`.
#
# Needs root, cgroup v1 or v2 mounted, Go (the version tests/cluster/go.mod names), openssl, iproute2,
# util-linux (unshare, nsenter), apt-get (for the node packages). Binaries are cached under
# .tools/cluster (keyed by tests/cluster/go.mod, go.sum and the package versions): a second `up` starts in
# about half a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

K8S_VERSION="v1.36.3"               # must match tests/cluster/go.mod
DEBIAN_PACKAGES="containerd runc containernetworking-plugins nftables libnftables1 libnftnl11 libmnl0 libjansson4 libxtables12 libedit2 libgmp10 libbsd0 libmd0 busybox-static"
DIR="${TW_CLUSTER_DIR:-/var/tmp/toolwarden-cluster}"
CACHE="$REPO/.tools/cluster"
NODE="twnode"                        # node name and network namespace name
HOST_IP="172.31.255.1"               # host end of the node's veth: the API server's address
NODE_IP="172.31.255.2"               # node end: kubelet, kube-proxy, pods' gateway
POD_CIDR="10.244.0.0/16"
NODE_POD_CIDR="10.244.0.0/22"
SERVICE_CIDR="10.96.0.0/16"
ETCD_PORT=12379
PAUSE_IMAGE="registry.k8s.io/pause:3.10.2"
TOOL_IMAGE="toolwarden.local/lab-tools:1"   # busybox-static: sh, sleep, cat, id, ps...

BIN="$CACHE/bin"
DEB="$CACHE/debroot"
PKI="$DIR/pki"
LOGS="$DIR/logs"
PIDS="$DIR/pids"
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy"
NODE_ROOT="$DIR/node"                # bind-mounted over the node's default paths inside its mount namespace
MNT_NS="$DIR/ns/mnt"
CONTAINERD_SOCK="/run/containerd/containerd.sock"   # as the node's mount namespace sees it

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- build
key_of() { cat "$@" | sha256sum | cut -c1-16; }

build_kubernetes() {
  local key
  key="$(key_of tests/cluster/go.mod tests/cluster/go.sum tests/cluster/cmd/etcd/main.go; go version)"
  if [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$key" ]; then return; fi
  command -v go >/dev/null || die "Go is needed to build Kubernetes $K8S_VERSION (tests/cluster)"
  log "building Kubernetes $K8S_VERSION and etcd from the Go module proxy (cold: 10-20 minutes on 2 cores)"
  mkdir -p "$BIN"
  local v="$K8S_VERSION" minor
  minor="$(echo "$v" | cut -d. -f2)"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X '$pkg.gitVersion=$v' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor' -X '$pkg.gitTreeState=clean'"
  done
  (cd tests/cluster && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
    ./cmd/etcd) || die "go build of Kubernetes failed"
  "$BIN/kube-apiserver" --version | grep -q "$v" || die "kube-apiserver does not report $v"
  echo "$key" >"$BIN/.stamp"
}

install_node_packages() {
  local key
  key="$(echo "$DEBIAN_PACKAGES" | sha256sum | cut -c1-16)"
  if [ -f "$DEB/.stamp" ] && [ "$(cat "$DEB/.stamp")" = "$key" ]; then return; fi
  log "extracting Debian packages: $DEBIAN_PACKAGES"
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2086
  if ! (cd "$work" && apt-get download -qq $DEBIAN_PACKAGES 2>&1 | grep -v 'Download is performed unsandboxed'); then :; fi
  if ! ls "$work"/containerd_*.deb >/dev/null 2>&1; then
    log "package lists are stale; running apt-get update"
    apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    (cd "$work" && apt-get download -qq $DEBIAN_PACKAGES 2>&1 | grep -v 'Download is performed unsandboxed') || true
  fi
  rm -rf "$DEB"
  for p in $DEBIAN_PACKAGES; do
    ls "$work/${p}_"*.deb >/dev/null 2>&1 || die "apt-get download $p produced no .deb"
    dpkg -x "$work/${p}_"*.deb "$DEB"
  done
  rm -rf "$work"
  [ -x "$DEB/usr/bin/containerd" ] && [ -x "$DEB/usr/sbin/runc" ] && [ -x "$DEB/usr/lib/cni/bridge" ] \
    && [ -x "$DEB/usr/sbin/nft" ] && [ -x "$DEB/bin/busybox" ] || die "the node packages lack a binary"
  echo "$key" >"$DEB/.stamp"
}

build_pause() {
  [ -x "$CACHE/pause" ] && return
  local src
  src="$(cd tests/cluster && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [ -f "$src" ] || (cd tests/cluster && go mod download k8s.io/kubernetes)
  gcc -Os -static -DVERSION="3.10.2" -o "$CACHE/pause" "$src" || die "cannot build the pause binary from $src"
}

build_node_images() {
  local work
  work="$(mktemp -d)"
  mkdir -p "$work/pause" "$work/tools/bin" "$work/tools/tmp"
  install -m 0755 "$CACHE/pause" "$work/pause/pause"
  deploy/oci-image.sh "$CACHE/images/pause.oci.tar" "$PAUSE_IMAGE" "$work/pause" --entrypoint '["/pause"]' --user 65535:65535 >/dev/null
  install -m 0755 "$DEB/bin/busybox" "$work/tools/bin/busybox"
  for applet in sh cat echo sleep id ps ls wc grep head tail env printf true false date mkdir rm touch stat dd seq tr cut sed awk; do
    ln -s busybox "$work/tools/bin/$applet"
  done
  chmod 1777 "$work/tools/tmp"
  deploy/oci-image.sh "$CACHE/images/lab-tools.oci.tar" "$TOOL_IMAGE" "$work/tools" >/dev/null
  rm -rf "$work"
}

# ------------------------------------------------------------------------------------------------ PKI
cert() { # NAME CN [O] [SAN...]: a client or serving certificate signed by the cluster CA
  local name="$1" cn="$2" org="${3:-}" subj
  shift 3 || shift $#
  subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ $# -gt 0 ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      local sans="" s
      for s in "$@"; do
        if [[ "$s" =~ ^[0-9.]+$ ]]; then sans+="IP:$s,"; else sans+="DNS:$s,"; fi
      done
      echo "subjectAltName=${sans%,}"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null || die "signing $name failed"
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() { # NAME SERVER: a kubeconfig for the client certificate NAME
  cat >"$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: toolwarden-e2e
  cluster:
    certificate-authority: $PKI/ca.crt
    server: $2
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: toolwarden-e2e
  context: {cluster: toolwarden-e2e, user: $1}
current-context: toolwarden-e2e
EOF
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 30 \
    -subj "/CN=toolwarden-e2e-ca" 2>/dev/null
  cert apiserver kube-apiserver "" "$HOST_IP" 127.0.0.1 10.96.0.1 localhost kubernetes kubernetes.default \
    kubernetes.default.svc kubernetes.default.svc.cluster.local
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin toolwarden-e2e-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kubelet "system:node:$NODE" system:nodes
  cert kube-proxy system:kube-proxy
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local server="https://$HOST_IP:6443"
  for n in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$n" "$server"; done
}

# ------------------------------------------------------------------------------------------- processes
start() { # NAME NS(host|node) CMD...: runs detached, logs to $LOGS/NAME.log, pid in $PIDS/NAME
  local name="$1" where="$2"
  shift 2
  local -a prefix=()
  [ "$where" = node ] && prefix=(nsenter --net="/run/netns/$NODE" --mount="$MNT_NS" --)
  PATH="$BIN:$DEB/usr/bin:$DEB/usr/sbin:$DEB/sbin:$PATH" LD_LIBRARY_PATH="$DEB/usr/lib/x86_64-linux-gnu:$DEB/lib/x86_64-linux-gnu" \
    setsid "${prefix[@]}" "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name"
}

running() { [ -f "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

wait_for() { # WHAT SECONDS CMD...
  local what="$1" secs="$2" i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up within ${secs}s; logs: $LOGS"
}

kubectl_admin() { "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

# ------------------------------------------------------------------------------------------ network
make_network() {
  ip netns add "$NODE"
  ip link add tw-host type veth peer name tw-node netns "$NODE"
  ip addr add "$HOST_IP/30" dev tw-host
  ip link set tw-host up
  ip -n "$NODE" link set lo up
  ip -n "$NODE" addr add "$NODE_IP/30" dev tw-node
  ip -n "$NODE" link set tw-node up
  ip -n "$NODE" route add default via "$HOST_IP"
  # Forwarding and bridge netfilter inside the node's own network namespace only: the host's stay as
  # they are (the host forwards nothing; it reaches pods and Services through the routes below).
  ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$NODE" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  ip route add "$POD_CIDR" via "$NODE_IP" dev tw-host
  ip route add "$SERVICE_CIDR" via "$NODE_IP" dev tw-host
}

# The node's mount namespace: the default paths of containerd, the CNI plugins and the kubelet are bind
# mounts of directories under $NODE_ROOT, so nothing they write lands on the host's /var or /run; the
# kernel settings the kubelet would change machine-wide are files holding the values it wants.
make_node_mounts() {
  mkdir -p "$DIR/ns" "$NODE_ROOT"
  mount --bind "$DIR/ns" "$DIR/ns"
  mount --make-private "$DIR/ns"
  touch "$MNT_NS"
  unshare --mount="$MNT_NS" --propagation slave true
  local d created="$DIR/created-mountpoints"
  : >"$created"
  for d in /run/containerd /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log/containers \
           /etc/cni/net.d /opt/cni/bin /var/lib/cni /run/netns /var/run/toolwarden-sysctl; do
    # Record every directory created on the host (parents too), so `down` removes exactly those.
    local missing="$d"
    while [ ! -d "$(dirname "$missing")" ]; do missing="$(dirname "$missing")"; done
    if [ ! -d "$d" ]; then
      mkdir -p "$d"
      local part="$d"
      while :; do echo "$part" >>"$created"; [ "$part" = "$missing" ] && break; part="$(dirname "$part")"; done
    fi
    mkdir -p "$NODE_ROOT$d"
    nsenter --mount="$MNT_NS" mount --bind "$NODE_ROOT$d" "$d"
  done
  cp "$DEB"/usr/lib/cni/* "$NODE_ROOT/opt/cni/bin/"
  # vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1: what the kubelet sets on a node it
  # owns. They are not namespaced, so the node sees files with these values instead (the containers see
  # the real ones through their own /proc).
  local s v
  for s in vm/overcommit_memory:1 kernel/panic:10 kernel/panic_on_oops:1 vm/panic_on_oom:0 \
           kernel/keys/root_maxkeys:1000000 kernel/keys/root_maxbytes:25000000; do
    v="${s#*:}" s="${s%%:*}"
    if [ "$(cat "/proc/sys/$s")" != "$v" ]; then
      echo "$v" >"$NODE_ROOT/var/run/toolwarden-sysctl/${s//\//.}"
      nsenter --mount="$MNT_NS" mount --bind "/var/run/toolwarden-sysctl/${s//\//.}" "/proc/sys/$s"
    fi
  done
}

write_node_config() {
  cat >"$NODE_ROOT/etc/cni/net.d/10-toolwarden.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "toolwarden-e2e", "plugins": [
  {"type": "bridge", "bridge": "tw0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
]}
EOF
  mkdir -p "$DIR/etc"
  cat >"$DIR/etc/containerd.toml" <<EOF
version = 2
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$DEB/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
  cat >"$DIR/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
oomScoreAdj: 0
protectKernelDefaults: false
maxPods: 300
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
registerNode: true
podCIDR: $NODE_POD_CIDR
EOF
  # Who asked the API server for what: the benchmarks count each component's requests from this log.
  cat >"$DIR/etc/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  userGroups: ["system:nodes"]
- level: None
  users: ["system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy", "system:apiserver"]
- level: None
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
EOF
  cat >"$DIR/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $NODE
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nftables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# ----------------------------------------------------------------------------------------- commands
build() { # everything `up` needs that takes time, cached under .tools/cluster
  mkdir -p "$CACHE/images"
  build_kubernetes
  install_node_packages
  build_pause
  build_node_images
}

# The kubelet's command line, for `up` and for `outage`.
start_kubelet() {
  start kubelet node "$BIN/kubelet" --config "$DIR/etc/kubelet.yaml" --kubeconfig "$DIR/kubelet.kubeconfig" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --cert-dir "$DIR/kubelet-pki"
}

# The API server's command line, for `up` and for `outage`.
start_apiserver() {
  start kube-apiserver host "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address "$HOST_IP" --advertise-address "$HOST_IP" \
    --secure-port 6443 --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=false --profiling=false --endpoint-reconciler-type lease \
    --audit-policy-file "$DIR/etc/audit-policy.yaml" --audit-log-path "$LOGS/audit.log" --audit-log-format json \
    --audit-log-maxsize 200 --audit-log-maxbackup 2
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (the node needs namespaces, mounts and cgroups)"
  if [ -f "$DIR/up" ]; then
    local n dead=""
    for n in $COMPONENTS; do running "$n" || dead="$dead $n"; done
    if [ -z "$dead" ]; then
      log "already up ($DIR); reusing it (run down first for a fresh one)"
      return 0
    fi
    # A machine restart or a killed run leaves the state behind with its processes gone.
    log "stale cluster state in $DIR (not running:$dead); taking it down and starting afresh"
  fi
  [ -d "$DIR" ] && down_quietly
  for c in openssl ip unshare nsenter gcc apt-get dpkg python3; do
    command -v "$c" >/dev/null || die "$c is needed (Debian: openssl iproute2 util-linux gcc apt dpkg python3)"
  done
  ls /sys/fs/cgroup/memory >/dev/null 2>&1 || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no cgroup hierarchy is mounted"
  KUBECTL="$(command -v kubectl || echo "$REPO/.tools/bin/kubectl")"
  [ -x "$KUBECTL" ] || die "kubectl is needed (scripts/install-tools.sh puts it in .tools/bin)"
  build

  mkdir -p "$DIR" "$LOGS" "$PIDS"
  make_pki
  make_network
  make_node_mounts
  write_node_config

  log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
  start etcd host "$BIN/etcd" --name tw --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "tw=http://127.0.0.1:$((ETCD_PORT + 1))" --quota-backend-bytes 2147483648 --unsafe-no-fsync
  start_apiserver
  wait_for "etcd" 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  wait_for "kube-apiserver" 120 kubectl_admin get --raw /readyz
  start kube-controller-manager host "$BIN/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
    --controllers '*'
  start kube-scheduler host "$BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false

  log "starting the node: containerd, kubelet, kube-proxy (network namespace $NODE)"
  start containerd node "$DEB/usr/bin/containerd" --config "$DIR/etc/containerd.toml"
  wait_for "containerd" 60 nsenter --mount="$MNT_NS" "$DEB/usr/bin/ctr" --address "$CONTAINERD_SOCK" version
  load "$CACHE/images/pause.oci.tar" "$CACHE/images/lab-tools.oci.tar"
  start_kubelet
  start kube-proxy node "$BIN/kube-proxy" --config "$DIR/etc/kube-proxy.yaml"
  wait_for "node $NODE Ready" 180 kubectl_admin wait --for=condition=Ready "node/$NODE" --timeout=1s
  wait_for "the default service account" 60 kubectl_admin get serviceaccount default -n default
  touch "$DIR/up"
  log "up: export KUBECONFIG=$DIR/admin.kubeconfig"
}

load() { # FILE...: import OCI archives into the node's containerd (the CRI's k8s.io namespace)
  [ $# -gt 0 ] || die "usage: $0 load IMAGE.oci.tar..."
  local f
  for f in "$@"; do
    [ -f "$f" ] || die "no such image archive: $f"
    f="$(readlink -f "$f")"   # nsenter starts ctr in the node's mount namespace at /
    nsenter --mount="$MNT_NS" "$DEB/usr/bin/ctr" --address "$CONTAINERD_SOCK" -n k8s.io images import \
      --no-unpack=false "$f" >/dev/null || die "ctr images import $f failed (see $LOGS/containerd.log)"
    log "loaded $f"
  done
}

kill_pid_file() { # NAME
  local f="$PIDS/$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Every process in the kubelet's cgroups (containers, pause processes) and every containerd shim.
kill_containers() {
  local pids
  for _ in 1 2 3; do
    pids="$( (find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs -exec cat {} + 2>/dev/null || true; \
              pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true) | sort -u)"
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
}

remove_cgroups() {
  local d
  # Deepest first: a cgroup directory can only be removed once it has no children.
  { find /sys/fs/cgroup -depth -type d -name 'kubepods*' 2>/dev/null || true; } | while read -r top; do
    find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  for d in $(find /sys/fs/cgroup -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null); do
    rmdir "$d" 2>/dev/null || log "cgroup $d still busy"
  done
}

down_quietly() {
  for n in kube-proxy kubelet; do kill_pid_file "$n"; done
  kill_containers
  kill_pid_file containerd
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  for n in kube-scheduler kube-controller-manager kube-apiserver etcd; do kill_pid_file "$n"; done
  if [ -e "$MNT_NS" ]; then umount "$MNT_NS" 2>/dev/null || umount -l "$MNT_NS" 2>/dev/null || true; fi
  if mountpoint -q "$DIR/ns" 2>/dev/null; then umount "$DIR/ns" 2>/dev/null || umount -l "$DIR/ns" || true; fi
  ip netns del "$NODE" 2>/dev/null || true
  ip link del tw-host 2>/dev/null || true
  remove_cgroups
  if [ -f "$DIR/created-mountpoints" ]; then
    sort -r "$DIR/created-mountpoints" | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  fi
  # Anything still mounted under $DIR (a mount namespace that outlived its processes) would stop rm.
  { grep -o " $DIR[^ ]*" /proc/self/mountinfo 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$DIR"
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  down_quietly
  log "down: nothing of the cluster is left ($DIR removed, network namespace $NODE deleted)"
}

outage() { # COMPONENT SECONDS: stops kube-apiserver or the kubelet for a while, then starts it again
  local name="$1" seconds="$2"
  case "$name" in kube-apiserver|kubelet) ;; *) die "outage: only kube-apiserver or kubelet" ;; esac
  running "$name" || die "$name is not running"
  KUBECTL="$(command -v kubectl || echo "$REPO/.tools/bin/kubectl")"
  log "outage: stopping $name for ${seconds}s"
  kill_pid_file "$name"
  sleep "$seconds"
  if [ "$name" = kubelet ]; then
    start_kubelet
    wait_for "node $NODE Ready" 180 kubectl_admin wait --for=condition=Ready "node/$NODE" --timeout=1s
  else
    start_apiserver
    wait_for "kube-apiserver" 120 kubectl_admin get --raw /readyz
  fi
  log "outage: $name is back"
}

status() {
  for n in $COMPONENTS; do
    if running "$n"; then echo "$n: running (pid $(cat "$PIDS/$n"))"; else echo "$n: not running"; fi
  done
  KUBECTL="$(command -v kubectl || echo "$REPO/.tools/bin/kubectl")"
  [ -f "$DIR/admin.kubeconfig" ] && kubectl_admin get nodes -o wide 2>&1 || true
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  load) shift; load "$@" ;;
  env) echo "export KUBECONFIG=$DIR/admin.kubeconfig" ;;
  status) status ;;
  outage) shift; outage "$@" ;;
  *) echo "usage: $0 build|up|down|load FILE...|env|status|outage kube-apiserver|kubelet SECONDS" >&2; exit 2 ;;
esac

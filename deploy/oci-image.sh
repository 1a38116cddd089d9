#!/usr/bin/env bash
# Writes a single-layer OCI image archive (an OCI image layout in a tar) from a directory, with no
# container engine: the layer is the directory itself, as from `FROM scratch` + `COPY`. The archive loads
# with `ctr images import`, `docker load` (Docker 25+), `podman load` and `skopeo copy oci-archive:...`.
#
#   deploy/oci-image.sh OUT.tar NAME:TAG ROOTFS_DIR [--entrypoint JSON_ARRAY] [--user UID:GID] [--env K=V]...
#
# The layer is reproducible: entries sorted, mtime 0, owner root (numeric), so the same inputs give the
# same digests.
set -euo pipefail

die() { echo "oci-image: ERROR: $*" >&2; exit 1; }

[ $# -ge 3 ] || die "usage: $0 OUT.tar NAME:TAG ROOTFS_DIR [--entrypoint JSON_ARRAY] [--user UID:GID] [--env K=V]..."
out="$1" name="$2" rootfs="$3"
shift 3
entrypoint="" user="" envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --entrypoint) entrypoint="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
[ -d "$rootfs" ] || die "$rootfs is not a directory"
case "$name" in *:*) ;; *) die "the image name needs a tag: $name" ;; esac
tag="${name##*:}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/layout/blobs/sha256"

blob() { # FILE -> moves it into blobs/, prints "digest size"
  local digest size
  digest="$(sha256sum "$1" | cut -d' ' -f1)"
  size="$(stat -c %s "$1")"
  mv "$1" "$work/layout/blobs/sha256/$digest"
  echo "$digest $size"
}
json_string() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer.tar" .
read -r layer_digest layer_size < <(blob "$work/layer.tar")

env_json="[\"PATH=/usr/local/bin:/usr/bin:/bin\""
for e in "${envs[@]+"${envs[@]}"}"; do env_json+=",$(json_string "$e")"; done
env_json+="]"
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":$env_json"
[ -n "$entrypoint" ] && config+=",\"Entrypoint\":$entrypoint"
[ -n "$user" ] && config+=",\"User\":$(json_string "$user")"
config+="},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_digest\"]}}"
python3 -c 'import json,sys; json.loads(sys.argv[1])' "$config" || die "bad --entrypoint or --env: $config"
printf '%s' "$config" >"$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"io.containerd.image.name\":$(json_string "$name"),\"org.opencontainers.image.ref.name\":$(json_string "$tag")}}]}" >"$work/layout/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/layout" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "oci-image: $name -> $out (manifest sha256:$manifest_digest, layer $((layer_size / 1024)) KiB)"

#!/usr/bin/env bash
# make image: build the launcher image from the Containerfile with buildah, here, without a
# registry or a container engine (run as root). Idempotent: the Debian base image is made
# once per Debian release (mmdebstrap, tarball cached in .cache/image/), and buildah's layer
# cache makes a rebuild of unchanged sources take seconds.
#
#   1. buildah and mmdebstrap (hack/install-deps.sh --image), only for this.
#   2. The base: localhost/pvl-debian:<release>-minbase, the machine's own Debian release
#      (probed from /etc/os-release), from the machine's own apt sources, when missing.
#      The Containerfile's `FROM ${DEBIAN_IMAGE}` is pointed at it with a build argument,
#      so nothing is pulled and no public image name is shadowed in local storage.
#   3. The image: `buildah bud --isolation chroot --network host`, tagged
#      localhost/py-virt-launcher:<version from pyproject.toml>; its size is printed.
#
#   hack/build-image.sh           build (make image)
#   hack/build-image.sh --clean   remove the image, the base, buildah's dangling layers (the
#                                 build cache) and .cache/image (make image-clean)
#
# Environment:
#   KUBEVIRT_HELPERS   absent (default) | kubevirt: copy container-disk, virt-tail and
#                      virt-probe from KubeVirt's launcher image (needs its registry)
#   KUBEVIRT_VERSION   KubeVirt's image tag for the helpers (Containerfile default)
#   KUBEVIRT_LAUNCHER  KubeVirt's launcher image without tag (Containerfile default)
#   PVL_IMAGE          the tag to build (default localhost/py-virt-launcher:<version>)
#   PVL_DEBIAN_RELEASE the Debian release of the image (default: this machine's)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=$REPO/.cache/image
log() { echo "image: $*" >&2; }
die() { echo "image: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "run as root (buildah's storage is root's, mmdebstrap needs root)"
clean=false
case ${1:-} in
  "") ;;
  --clean) clean=true ;;
  *) echo "usage: $0 [--clean]" >&2; exit 2 ;;
esac
bash "$REPO/hack/install-deps.sh" --image >&2

# --- what to build ------------------------------------------------------------------------
debian_release() {
  local codename=""
  if [[ -r /etc/os-release ]]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  if [[ -z $codename && -r /etc/debian_version ]]; then
    case $(cut -d. -f1 /etc/debian_version) in
      12) codename=bookworm ;;
      13) codename=trixie ;;
      14) codename=forky ;;
    esac
  fi
  [[ -n $codename ]] || die "cannot tell this machine's Debian release; set PVL_DEBIAN_RELEASE"
  echo "$codename"
}
release=${PVL_DEBIAN_RELEASE:-$(debian_release)}
version=$(python3 -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
image=${PVL_IMAGE:-localhost/py-virt-launcher:$version}
base=localhost/pvl-debian:$release-minbase
helpers=${KUBEVIRT_HELPERS:-absent}
case $helpers in
  absent|kubevirt) ;;
  *) die "KUBEVIRT_HELPERS must be absent or kubevirt, not $helpers" ;;
esac

exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

if $clean; then  # make image-clean: what make image made, and buildah's build cache
  for ref in "$image" "$base"; do
    ! exists "$ref" || buildah rmi "$ref" >/dev/null
  done
  buildah rmi --prune >/dev/null || true
  rm -rf "$CACHE"
  log "removed $image, $base, dangling layers and $CACHE"
  exit 0
fi

# --- 2. the Debian base image -------------------------------------------------------------
apt_sources() {
  # The sources this machine's apt uses (mirrors, security): what it can reach. When the
  # machine's release is not the one asked for, mmdebstrap's defaults for that release.
  local f
  [[ $release == "$(debian_release)" ]] || return 0
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]] && grep -qE '^[[:space:]]*(deb |URIs:)' "$f"; then
      echo "$f"
      return 0
    fi
  done
}

make_base_tar() {
  local tar=$1 tmp=$1.part
  local -a mirror=()
  local src
  src=$(apt_sources)
  [[ -z $src ]] || mirror=("$src")
  log "making the Debian $release base with mmdebstrap (${src:-its default mirrors})"
  mkdir -p "$CACHE"
  rm -f "$tmp"
  # minbase (Essential + apt), merged /usr; documentation, man pages and translations left
  # out of every package installed later too (dpkg path excludes, as Debian's -slim
  # images); apt keeps no downloaded packages and no binary caches in the image.
  mmdebstrap --variant=minbase --format=tar --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='printf "%s\n" "APT::Keep-Downloaded-Packages \"false\";" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" > "$1/etc/apt/apt.conf.d/docker-clean"; rm -f "$1"/var/cache/apt/*.bin' \
    "$release" "$tmp" "${mirror[@]}" </dev/null
  mv "$tmp" "$tar"
}

if exists "$base"; then
  log "base $base present"
else
  t0=$(now)
  tar=$CACHE/debian-$release-minbase.tar
  [[ -s $tar ]] || make_base_tar "$tar"
  log "importing $tar as $base"
  ctr=$(buildah from --pull=false scratch)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah add --quiet "$ctr" "$tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["/bin/bash"]' --label "io.github.py-virt-launcher.debian-base=mmdebstrap minbase $release" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$base" >/dev/null
  trap - EXIT
  log "base $base made in $(since "$t0") s"
fi

# --- 3. the launcher image ----------------------------------------------------------------
t0=$(now)
# buildah 1.28 reuses a cached RUN layer whatever its bind mounts hold (hack/ from the
# context): a digest of the sources, as a build argument of that step, makes a change rerun
# it. (COPY steps are cached by content already.)
digest=$(cd "$REPO" && find pyproject.toml README.md hack launcher monitor -type f \
           ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z |
           xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
args=(--isolation chroot --network host --layers --pull=false
      --build-arg "DEBIAN_IMAGE=$base" --build-arg "KUBEVIRT_HELPERS=$helpers"
      --build-arg "VERSION=$version" --build-arg "SOURCES_DIGEST=$digest")
[[ -z ${KUBEVIRT_VERSION:-} ]] || args+=(--build-arg "KUBEVIRT_VERSION=$KUBEVIRT_VERSION")
[[ -z ${KUBEVIRT_LAUNCHER:-} ]] || args+=(--build-arg "KUBEVIRT_LAUNCHER=$KUBEVIRT_LAUNCHER")
# The CA bundle this machine trusts, for pip in the build stage (a build secret: it is in
# no layer). Behind a TLS-inspecting proxy, Debian's stock bundle would not do.
[[ ! -s /etc/ssl/certs/ca-certificates.crt ]] ||
  args+=(--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt)
log "building $image (Debian $release, KubeVirt's helpers: $helpers)"
containers() { buildah containers --quiet --notruncate | sort; }
before=$(containers)
status=0
buildah bud "${args[@]}" -f "$REPO/Containerfile" -t "$image" "$REPO" >&2 || status=$?
# buildah 1.28 leaves behind (mounted) the working container of a stage that a
# `RUN --mount=...,from=<stage>` used; remove what this build created, nothing else.
leaked=$(comm -13 <(echo "$before") <(containers))
[[ -z $leaked ]] || buildah rm $leaked >/dev/null
((status == 0)) || die "buildah bud failed ($status)"
log "built $image in $(since "$t0") s"
buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$image"

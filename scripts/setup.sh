#!/usr/bin/env bash
# Set up nixgold on Debian 12 (or Ubuntu 22.04+): system packages, a .venv in the repo and Packer.
#   bash scripts/setup.sh         # to run nixgold (python, a Packer for the default config)
#   bash scripts/setup.sh --dev   # also what the tests need (nix, shellcheck, qemu, debootstrap, ...)
#
# Packer. The default config (UEFI) needs Packer >= 1.10, the "plugin" dialect.
#   setup.sh:       keeps a packer >= 1.10 already on PATH; else, when Go is installed, builds Packer
#                   $PACKER_VERSION from its Go module and installs it as /usr/local/bin/packer; else
#                   installs Debian's packer 1.6.6 (the "bundled" dialect: BIOS only).
#   setup.sh --dev: Debian's packer 1.6.6 as `packer` (the tests' bundled dialect), and Packer
#                   $PACKER_VERSION built into $tools_cache, linked as .venv/bin/plugin-dialect-packer;
#                   builds packer-plugin-proxmox $PROXMOX_PLUGIN_VERSION into $tools_cache too and
#                   installs it for that Packer (`packer plugins install --path`). Both come from
#                   their Go modules; where the Go proxy does not serve the plugin's source (it answers
#                   403 for packer-plugin-proxmox's zip, every version, on some proxies), a plugin
#                   binary of that version already in $tools_cache is used if there is one; else one
#                   line says the plugin-dialect tests cannot run, and setup goes on.
# Only package registries are contacted (apt, PyPI, the Go module proxy and its checksum database);
# nothing prebuilt is downloaded: Packer and the plugin are compiled here from their source.
set -euo pipefail

PACKER_VERSION=1.16.0         # github.com/hashicorp/packer, built from its Go module
PROXMOX_PLUGIN_VERSION=1.2.4  # github.com/hashicorp/packer-plugin-proxmox, the plugin dialect's target
PROXMOX_PLUGIN_MODULE=github.com/hashicorp/packer-plugin-proxmox

export CHECKPOINT_DISABLE=1   # `packer version` would otherwise ask HashiCorp's checkpoint service
tools_cache="${NIXGOLD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nixgold-tools}"
packer_cached="$tools_cache/packer-$PACKER_VERSION/packer"
plugin_cached="$tools_cache/packer-plugin-proxmox-$PROXMOX_PLUGIN_VERSION/packer-plugin-proxmox"
plugin_link=.venv/bin/plugin-dialect-packer

version_ge() {  # version_ge A B: A >= B
  [ "$(printf '%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

packer_version() {  # packer_version BINARY: "1.16.0" from `BINARY version` (empty when it fails)
  "$1" version 2>/dev/null | sed -n '1s/^Packer v\([0-9][0-9.]*\).*/\1/p' || true
}

find_go() {  # the go command: on PATH, or where the official tarball puts it
  if command -v go >/dev/null 2>&1; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

go_proxy() {  # the module proxies go_run uses: GOPROXY without direct/off, else proxy.golang.org
  local proxy
  proxy=$("$gocmd" env GOPROXY | tr ',|' '\n' | grep -vxE 'direct|off|' | paste -sd, - || true)
  echo "${proxy:-https://proxy.golang.org}"
}

# go_run ARGS: go, fetching modules from the module proxy only (no VCS, no toolchain downloads).
go_run() {
  env GOPROXY="$(go_proxy)" GONOPROXY= GOPRIVATE= GONOSUMDB= \
    GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" "$gocmd" "$@"
}

json_field() {  # json_field NAME < JSON
  python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}

# build_go_module MODULE VERSION OUT LOG: download MODULE@vVERSION's source from the Go module proxy,
# build its main package in a writable copy (the module cache is read-only) next to OUT, then move
# the binary to OUT (an atomic rename). Exit status 3: the proxy does not serve the module's source;
# 1: any other failure (details in LOG). A subshell, so every step is checked explicitly.
build_go_module() (
  module=$1 version=$2 out=$3 log=$4
  mkdir -p "${out%/*}" || exit 1
  work=$(mktemp -d "${out%/*}/.build.XXXXXX") || exit 1
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  if ! json=$(cd "$work" && go_run mod download -json "$module@v$version" 2>>"$log"); then
    error=$(json_field Error <<<"$json" 2>/dev/null || echo "$json")
    echo "go mod download $module@v$version: $error" >>"$log"
    case $error in *" 403 "* | *" 404 "* | *" 410 "* | *"not available"* | *"not found"*) exit 3 ;; esac
    exit 1
  fi
  src=$(json_field Dir <<<"$json") && [ -f "$src/go.mod" ] || exit 1
  need=$(sed -n 's/^go \([0-9][0-9.]*\).*/\1/p' "$src/go.mod")
  have=$(go_run env GOVERSION) && have=${have#go} || exit 1
  if [ -n "$need" ] && ! version_ge "$have" "$need"; then
    echo "Go $have ($gocmd) is too old: $module@v$version needs Go >= $need" >>"$log"
    exit 1
  fi
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src" || exit 1
  (cd "$work/src" && go_run build -o "$work/bin" .) >>"$log" 2>&1 || exit 1
  mv -f "$work/bin" "$out" || exit 1
)

build_packer() {  # make $packer_cached Packer $PACKER_VERSION (cached); non-zero when it cannot
  if [ -x "$packer_cached" ] && [ "$(packer_version "$packer_cached")" = "$PACKER_VERSION" ]; then
    echo "[setup] Packer $PACKER_VERSION already built: $packer_cached"
    return 0
  fi
  local log="${packer_cached%/*}/build.log" start=$SECONDS rc=0
  mkdir -p "${packer_cached%/*}" && : >"$log"
  echo "[setup] building Packer $PACKER_VERSION from its Go module github.com/hashicorp/packer with $gocmd (a few minutes the first time; log: $log)"
  build_go_module github.com/hashicorp/packer "$PACKER_VERSION" "$packer_cached" "$log" || rc=$?
  if [ "$rc" -eq 0 ] && [ "$(packer_version "$packer_cached")" != "$PACKER_VERSION" ]; then
    echo "built binary does not report Packer v$PACKER_VERSION: $("$packer_cached" version 2>&1 | head -n1)" >>"$log"
    rm -f "$packer_cached"
    rc=1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "[setup] building Packer $PACKER_VERSION failed (log: $log), last lines:" >&2
    tail -n 15 "$log" | sed 's/^/[setup]   /' >&2
    return 1
  fi
  echo "[setup] built Packer $PACKER_VERSION in $((SECONDS - start))s: $packer_cached"
}

plugin_version() {  # plugin_version BINARY: "1.2.4" from `BINARY describe` (empty when it fails)
  "$1" describe 2>/dev/null | json_field version 2>/dev/null || true
}

try_proxmox_plugin() {  # dev: build packer-plugin-proxmox (cached) and install it for Packer; never fails
  local dir="${plugin_cached%/*}" log rc=0 route installed
  local name="packer-plugin-proxmox v$PROXMOX_PLUGIN_VERSION"
  log="$dir/build.log"
  if [ -x "$plugin_cached" ] && [ "$(plugin_version "$plugin_cached")" = "$PROXMOX_PLUGIN_VERSION" ]; then
    echo "[setup] $name already built ($(cat "$dir/source" 2>/dev/null || echo "source unrecorded")): $plugin_cached"
  else
    mkdir -p "$dir" && : >"$log"
    echo "[setup] building $name from its Go module $PROXMOX_PLUGIN_MODULE (log: $log)"
    route="from its Go module $PROXMOX_PLUGIN_MODULE (go mod download)"
    build_go_module "$PROXMOX_PLUGIN_MODULE" "$PROXMOX_PLUGIN_VERSION" "$plugin_cached" "$log" || rc=$?
    if [ "$rc" -eq 3 ]; then
      echo "[setup] $name cannot be built here: the Go proxy ($(go_proxy)) does not serve its source (log: $log) and $dir holds no binary that describes itself as v$PROXMOX_PLUGIN_VERSION; the plugin-dialect tests cannot run; continuing"
      return 0
    fi
    if [ "$rc" -eq 0 ] && [ "$(plugin_version "$plugin_cached")" != "$PROXMOX_PLUGIN_VERSION" ]; then
      echo "built binary does not describe itself as version $PROXMOX_PLUGIN_VERSION: $("$plugin_cached" describe 2>&1 | head -n 1)" >>"$log"
      rm -f "$plugin_cached"
      rc=1
    fi
    if [ "$rc" -ne 0 ]; then
      echo "[setup] warning: building $name failed (log: $log, last lines below); the plugin-dialect tests cannot run; continuing" >&2
      tail -n 5 "$log" | sed 's/^/[setup]   /' >&2
      return 0
    fi
    echo "$route" >"$dir/source"
    echo "[setup] built $name: $plugin_cached"
  fi
  installed=$("$packer_cached" plugins installed 2>/dev/null || true)
  if grep -q "github.com/hashicorp/proxmox/packer-plugin-proxmox_v${PROXMOX_PLUGIN_VERSION}_" <<<"$installed"; then
    echo "[setup] $name already installed for Packer $PACKER_VERSION"
  elif "$packer_cached" plugins install --path "$plugin_cached" github.com/hashicorp/proxmox; then
    echo "[setup] installed $name for Packer $PACKER_VERSION (packer plugins install --path)"
  else
    echo "[setup] warning: packer plugins install --path $plugin_cached failed; continuing" >&2
  fi
}

# Sourced (the tests call the functions above): define them and stop here.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

cd "$(dirname "$0")/.."
dev=false
case "${1:-}" in
  --dev) dev=true ;;
  "") ;;
  *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# Which Packer: --dev always installs Debian's (the bundled dialect the tests run) and builds
# Packer $PACKER_VERSION beside it; a user's setup picks one that builds the default config.
gocmd=$(find_go || true)
packer_plan=debian
if $dev; then
  packer_plan=dev
elif path_packer=$(command -v packer) && version_ge "$(packer_version "$path_packer")" 1.10; then
  packer_plan=keep
elif [ -n "$gocmd" ]; then
  packer_plan=build
fi

packages=(python3 python3-venv python3-pip git ca-certificates openssh-client)
case $packer_plan in debian | dev) packages+=(packer) ;; esac  # Debian's packer is 1.6.6
if $dev; then
  packages+=(
    nix-bin shellcheck                       # parse/eval generated Nix, lint generated shell
    qemu-system-x86 qemu-utils ovmf          # the test bed's real guests (TCG; OVMF for UEFI)
    debootstrap cloud-image-utils            # stand-in Debian cloud image
    genisoimage xorriso squashfs-tools mtools grub-pc-bin grub-common isolinux syslinux-common  # stand-in ISO, cloud-init drives
    dnsmasq-base iproute2 socat e2fsprogs    # namespaced network, DHCP, sockets
  )
fi

echo "[setup] installing system packages: ${packages[*]}"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
echo "[setup] installing nixgold into .venv"
.venv/bin/python -m pip install -q --upgrade pip
if $dev; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi

uefi_note="[setup] note: Debian's Packer 1.6.6 builds BIOS templates only, but the default config (UEFI) needs Packer >= 1.10: install HashiCorp's package (apt repository https://apt.releases.hashicorp.com), or Go (>= 1.26.3) and re-run this script to build it from its Go module, or set vm.firmware = \"bios\" in nixgold.toml"
case $packer_plan in
  keep)
    echo "[setup] keeping $path_packer (Packer $(packer_version "$path_packer"), the plugin dialect)" ;;
  build)
    if build_packer; then
      $sudo install -m 0755 "$packer_cached" /usr/local/bin/packer
      echo "[setup] installed Packer $PACKER_VERSION as /usr/local/bin/packer (its first build's \`packer init\` fetches packer-plugin-proxmox)"
    else
      echo "[setup] falling back to Debian's packer"
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends packer
      echo "$uefi_note"
    fi ;;
  debian)
    echo "$uefi_note" ;;
  dev)
    if [ -z "$gocmd" ]; then
      echo "[setup] error: --dev builds Packer $PACKER_VERSION (the plugin dialect's tests) from its Go module and needs Go: install it (go on PATH or /usr/local/go/bin/go) and re-run" >&2
      exit 1
    fi
    build_packer
    ln -sfn "$packer_cached" "$plugin_link"
    echo "[setup] $plugin_link -> $packer_cached (the plugin dialect's Packer for the tests; \`packer\` stays Debian's)"
    try_proxmox_plugin
    path_packer=$(command -v packer || true)
    if [ "$path_packer" != /usr/bin/packer ]; then
      echo "[setup] warning: \`packer\` on PATH is ${path_packer:-missing} (Packer $(packer_version "${path_packer:-/nonexistent}")), not Debian's /usr/bin/packer 1.6.6 that the bundled-dialect tests expect" >&2
    fi ;;
esac
echo "[setup] done: .venv/bin/invoke --list"

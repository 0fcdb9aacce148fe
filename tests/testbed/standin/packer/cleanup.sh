#!/usr/bin/env bash
# nixgold test bed: the STAND-IN cleanup.sh (Debian 12), not generated. It replaces the rendered
# packer/cleanup.sh (NIXGOLD_RENDER_OVERLAY=tests/testbed/standin) when a build runs against the
# stand-in installer ISO; the Debian analogue of the NixOS cleanup.
#
# The last Packer provisioner: runs as root over SSH on the installed system, right before
# Packer shuts it down and converts it into the template. Everything here makes clones start
# fresh: no build key, no host keys, no machine-id, no cloud-init state.
set -Eeuo pipefail

STEP=0
STEP_NAME="start"

log() {
  printf '[%s] nixgold-cleanup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

step() {
  STEP=$((STEP + 1))
  STEP_NAME="$*"
  log "step ${STEP}: ${STEP_NAME}"
}

fail() {
  local code=$1
  shift
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  log "CLEANUP FAILED in step ${STEP} (${STEP_NAME}): $*"
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  exit "$code"
}

on_error() {
  fail "$1" "'$2' exited with $1 (cleanup.sh line $3)"
}

run() {
  log "+ $*"
  local code=0
  "$@" || code=$?
  if ((code != 0)); then
    fail "$code" "'$*' exited with ${code}"
  fi
}

main() {
  trap 'on_error $? "$BASH_COMMAND" $LINENO' ERR
  if ((EUID != 0)); then
    fail 1 "must run as root (Packer's SSH user is root)"
  fi

  step "reset cloud-init (clones must run it as a new instance)"
  run cloud-init clean --logs --seed
  # Network units cloud-init rendered during the build (fallback DHCP, no datasource then);
  # clones render their own from the NoCloud drive.
  rm -f /etc/systemd/network/10-cloud-init-*.network

  step "delete the SSH host keys (new ones on each clone's first boot)"
  rm -f /etc/ssh/ssh_host_*

  step "empty /etc/machine-id (clones generate their own; shared ids mean shared DHCP leases)"
  # Truncated, not deleted: systemd writes a fresh id into the empty file at boot.
  : >/etc/machine-id
  rm -f /var/lib/systemd/random-seed /var/lib/dbus/machine-id.old
  if [[ -f /var/lib/dbus/machine-id && ! -L /var/lib/dbus/machine-id ]]; then
    rm -f /var/lib/dbus/machine-id
  fi

  step "remove root's build key"
  rm -f /root/.ssh/authorized_keys

  step "discard unused blocks (smaller template on thin storage)"
  if ! fstrim -av; then
    log "WARNING: fstrim failed (storage without discard support?); continuing"
  fi

  step "sync"
  run sync
  log "cleanup finished"
}

main "$@" </dev/null

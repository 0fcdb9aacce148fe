#!/usr/bin/env bash
# nixgold test bed: the STAND-IN install.sh (Debian 12), not generated. It replaces the rendered
# http/install.sh (NIXGOLD_RENDER_OVERLAY=tests/testbed/standin) when a build runs against the
# stand-in installer ISO (tests/testbed/images/installer_iso.py) instead of the NixOS one.
#
# Same contract as the NixOS install.sh. The Packer boot_command types:
#   curl -fsS http://IP:PORT/install.sh | sudo bash -s -- http://IP:PORT
# The script arrives on stdin, so: everything happens inside main(), and the very last line
# calls it with stdin from /dev/null. A download cut short defines functions at most (or hits
# a syntax error) and runs nothing.
#
# It fetches the build's SSH public key (build_key.pub) from Packer's HTTP server, finds the
# VM's empty disk, partitions it (msdos, one ext4 partition: the last one, for growpart),
# copies the installed system from the ISO's base layer (/run/live/rootfs/filesystem.squashfs:
# the good stand-in cloud image, without the live session's layer), installs GRUB for BIOS
# with the image's normal initramfs, authorizes the key for root and reboots into the disk.
# Every step is logged to the console, the serial port and the log file; a failure names the
# step and the command.
set -Eeuo pipefail

readonly KEY_NAME=build_key.pub
readonly ROOT_LABEL=nixgold-root
# The ISO's layer 1 (the installed system) as live-boot mounted it; layer 2 is the live session.
readonly SOURCE=/run/live/rootfs/filesystem.squashfs
readonly MNT=/mnt/nixgold-target
readonly LOG_FILE=/tmp/nixgold-install.log
readonly SERIAL=/dev/ttyS0
readonly KERNEL_ARGS="root=LABEL=${ROOT_LABEL} ro console=tty0 console=ttyS0,115200 net.ifnames=0"
# What the live session changes (see installer_iso.py). None of it is in layer 1; if one ever
# is, it must not reach the template.
readonly LIVE_ONLY=(
  /etc/cloud/cloud-init.disabled
  /etc/systemd/network/90-nixgold-live.network
  /etc/systemd/system/nixgold-live-shell.service
  /etc/systemd/system/getty.target.wants/nixgold-live-shell.service
  /root/.bash_profile
)

STEP=0
STEP_NAME="start"
WORK=""
DISK=""

log() {
  local line
  line="[$(date -u +%Y-%m-%dT%H:%M:%SZ)] nixgold-install: $*"
  printf '%s\n' "$line" >&2
  { printf '%s\n' "$line" >>"$LOG_FILE"; } 2>/dev/null || true
  if [[ -w $SERIAL ]]; then
    { printf '%s\n' "$line" >>"$SERIAL"; } 2>/dev/null || true
  fi
}

step() {
  STEP=$((STEP + 1))
  STEP_NAME="$*"
  log "step ${STEP}: ${STEP_NAME}"
}

# Loud on purpose: this is what someone watching the VM console or serial log sees.
fail() {
  local code=$1
  shift
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  log "INSTALL FAILED in step ${STEP} (${STEP_NAME}): $*"
  log "log: ${LOG_FILE}"
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  exit "$code"
}

die() {
  fail 1 "$*"
}

# Any unexpected non-zero exit (set -e) lands here, with the command that failed.
on_error() {
  fail "$1" "'$2' exited with $1 (install.sh line $3)"
}

# Logs the command and names it when it fails; its output also goes to the log file and,
# when it fails, its last lines to the serial port.
run() {
  log "+ $*"
  local code=0 out
  out=$(mktemp)
  "$@" >"$out" 2>&1 || code=$?
  cat "$out" >&2
  cat "$out" >>"$LOG_FILE" 2>/dev/null || true
  if ((code != 0)); then
    local line
    while IFS= read -r line; do
      log "  | ${line}"
    done < <(tail -n 15 "$out")
    rm -f "$out"
    fail "$code" "'$*' exited with ${code}"
  fi
  rm -f "$out"
}

# /dev/sda -> /dev/sda1, /dev/vda -> /dev/vda1, /dev/nvme0n1 -> /dev/nvme0n1p1.
partition() {
  case "$1" in
    *[0-9]) printf '%sp%s\n' "$1" "$2" ;;
    *) printf '%s%s\n' "$1" "$2" ;;
  esac
}

wait_for_device() {
  local device=$1 tries=0
  until [[ -b $device ]]; do
    tries=$((tries + 1))
    if ((tries > 30)); then
      die "device ${device} did not appear after partitioning"
    fi
    sleep 1
  done
}

fetch() {
  local url=$1 dest=$2
  run curl -fsS --retry 5 --retry-connrefused --retry-delay 2 --max-time 120 -o "$dest" "$url"
}

check_build_key() {
  local file=$1 key
  if [[ $(wc -l <"$file") -gt 1 ]]; then
    die "${KEY_NAME} holds more than one line; expected exactly one OpenSSH public key"
  fi
  key=$(<"$file")
  local pattern='^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^[:cntrl:]]*)?$'
  if ! [[ $key =~ $pattern ]]; then
    die "${KEY_NAME} is not one OpenSSH public key: '${key:0:80}'"
  fi
}

# The install target: the first whole disk that is not removable, not read-only, not empty of
# sectors, and carries no partitions and no signature at all (the VM's fresh scsi0: /dev/sda on
# virtio-scsi, /dev/vda on virtio-blk). CD drives (the ISO on ide2 is /dev/sr0, a cloud-init
# drive another sr), loop devices (the squashfs layers) and RAM disks are never candidates.
find_target_disk() {
  local sys name candidates=() skipped=()
  for sys in /sys/block/*; do
    name=${sys##*/}
    case $name in
      loop* | ram* | sr* | zram* | dm-* | md* | fd* | nbd*) continue ;;
    esac
    if [[ $(<"${sys}/removable") != 0 ]]; then
      skipped+=("${name}: removable")
    elif [[ $(<"${sys}/ro") != 0 ]]; then
      skipped+=("${name}: read-only")
    elif [[ $(<"${sys}/size") == 0 ]]; then
      skipped+=("${name}: no medium")
    elif compgen -G "${sys}/${name}*/partition" >/dev/null; then
      skipped+=("${name}: has partitions")
    elif blkid -p "/dev/${name}" >/dev/null 2>&1; then
      skipped+=("${name}: has a signature ($(blkid -p -o value -s TYPE -s PTTYPE "/dev/${name}" | tr '\n' ' '))")
    else
      candidates+=("/dev/${name}")
    fi
  done
  local s
  for s in "${skipped[@]}"; do
    log "not a target: ${s}"
  done
  if ((${#candidates[@]} == 0)); then
    log "block devices:"
    local line
    while IFS= read -r line; do
      log "  ${line}"
    done < <(lsblk -o NAME,TYPE,RM,RO,SIZE,FSTYPE,MOUNTPOINT 2>&1 || true)
    die "no empty disk to install onto (expected the VM's new, blank disk)"
  fi
  if ((${#candidates[@]} > 1)); then
    log "WARNING: several empty disks (${candidates[*]}); using the first"
  fi
  DISK=${candidates[0]}
}

main() {
  trap 'on_error $? "$BASH_COMMAND" $LINENO' ERR
  # http://IP:PORT (IPv6 in brackets); nothing else may reach the curl command lines.
  local url_re='^https?://[][A-Za-z0-9.:_-]+/?$'
  if [[ $# -ne 1 || ! $1 =~ $url_re ]]; then
    log "usage: install.sh http://IP:PORT (Packer's HTTP server); got: $*"
    exit 2
  fi
  local base_url=${1%/}
  mkdir -p "${LOG_FILE%/*}"
  log "installing the Debian stand-in (BIOS) from ${base_url}"

  # Fetch and check everything first: a bad download must fail before the disk is wiped.
  step "fetch ${KEY_NAME} (this build's SSH public key)"
  WORK=$(mktemp -d)
  fetch "${base_url}/${KEY_NAME}" "${WORK}/${KEY_NAME}"
  check_build_key "${WORK}/${KEY_NAME}"

  step "check the installer's base layer ${SOURCE}"
  if ! mountpoint -q "$SOURCE"; then
    die "${SOURCE} is not mounted: not booted from the nixgold stand-in installer ISO?"
  fi
  local kernel_file
  kernel_file=$(find "${SOURCE}/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)
  if [[ -z $kernel_file || ! -e ${SOURCE}/boot/initrd.img-${kernel_file#vmlinuz-} ]]; then
    die "no kernel + initrd pair in ${SOURCE}/boot"
  fi
  log "kernel ${kernel_file#vmlinuz-}"

  step "find the target disk"
  find_target_disk
  local size
  size=$(blockdev --getsize64 "$DISK")
  log "target disk ${DISK}: ${size} bytes"

  step "wipe and partition ${DISK}"
  run wipefs -a "$DISK"
  # msdos, one ext4 partition from 1 MiB (room for GRUB's core.img) to the end: the last
  # partition, so cloud-init's growpart can grow it on clones with bigger disks.
  run parted -s "$DISK" -- mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on
  local root_part
  root_part=$(partition "$DISK" 1)

  step "wait for the partition device"
  run udevadm settle
  wait_for_device "$root_part"

  step "create the file system"
  run mkfs.ext4 -q -F -L "$ROOT_LABEL" "$root_part"

  step "mount the file system at ${MNT}"
  mkdir -p "$MNT"
  run mount -t ext4 "$root_part" "$MNT"

  step "copy the installed system from ${SOURCE}"
  run rsync -aHAX --numeric-ids "${SOURCE}/" "${MNT}/"
  log "copied $(du -sh --apparent-size "$MNT" | cut -f1)"

  step "undo the live session's settings in the target"
  local f
  for f in "${LIVE_ONLY[@]}"; do
    if [[ -e ${MNT}${f} || -L ${MNT}${f} ]]; then
      log "removing live-only ${f}"
      rm -f "${MNT}${f}"
    fi
  done
  # The live session masks the agent on the kernel command line only; in the target it must
  # be enabled (Packer finds the installed system through it).
  if [[ $(readlink "${MNT}/etc/systemd/system/qemu-guest-agent.service" || true) == /dev/null ]]; then
    log "unmasking qemu-guest-agent"
    rm -f "${MNT}/etc/systemd/system/qemu-guest-agent.service"
  fi
  local agent
  agent=$(systemctl --root="$MNT" is-enabled qemu-guest-agent.service 2>&1 || true)
  if [[ $agent != enabled ]]; then
    log "qemu-guest-agent is '${agent}' in the target; enabling it"
    run systemctl --root="$MNT" enable qemu-guest-agent.service
  fi
  log "qemu-guest-agent: $(systemctl --root="$MNT" is-enabled qemu-guest-agent.service 2>&1 || true)"

  step "write /etc/fstab"
  printf 'LABEL=%s\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' "$ROOT_LABEL" >"${MNT}/etc/fstab"

  step "install GRUB (BIOS) on ${DISK}"
  run grub-install --target=i386-pc --boot-directory="${MNT}/boot" --modules="part_msdos ext2" "$DISK"
  # The image's own initramfs (normal, not live-boot); /vmlinuz and /initrd.img are Debian's
  # links to the newest kernel.
  cat >"${MNT}/boot/grub/grub.cfg" <<EOF
# nixgold stand-in: written by install.sh (the installed system has no update-grub)
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=0
set timeout=1
menuentry 'Debian GNU/Linux (nixgold stand-in)' {
  insmod part_msdos
  insmod ext2
  search --no-floppy --label --set=root ${ROOT_LABEL}
  linux /vmlinuz ${KERNEL_ARGS}
  initrd /initrd.img
}
EOF
  if [[ ! -e ${MNT}/vmlinuz || ! -e ${MNT}/initrd.img ]]; then
    ln -sfn "boot/${kernel_file}" "${MNT}/vmlinuz"
    ln -sfn "boot/initrd.img-${kernel_file#vmlinuz-}" "${MNT}/initrd.img"
  fi
  log "boot: /vmlinuz -> $(readlink "${MNT}/vmlinuz"), /initrd.img -> $(readlink "${MNT}/initrd.img")"

  step "authorize the build key for root; sshd: keys only"
  install -d -m 0700 "${MNT}/root" "${MNT}/root/.ssh"
  install -m 0600 "${WORK}/${KEY_NAME}" "${MNT}/root/.ssh/authorized_keys"
  # sshd takes the first value it reads: this drop-in sorts before the image's own.
  install -d -m 0755 "${MNT}/etc/ssh/sshd_config.d"
  printf '%s\n' '# nixgold stand-in install.sh: Packer logs in as root with the build key' \
    'PermitRootLogin prohibit-password' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' \
    >"${MNT}/etc/ssh/sshd_config.d/10-nixgold-install.conf"

  step "first-boot identity: empty machine-id, no SSH host keys"
  : >"${MNT}/etc/machine-id"
  rm -f "${MNT}"/etc/ssh/ssh_host_* "${MNT}/var/lib/systemd/random-seed"

  step "unmount and reboot into the installed system"
  mkdir -p "${MNT}/var/log"
  cp "$LOG_FILE" "${MNT}/var/log/nixgold-install.log" || true
  run sync
  run umount "$MNT"
  log "install finished; rebooting"
  # Forced: the target is unmounted and synced, and the live session has nothing to save.
  run systemctl reboot --force
}

main "$@" </dev/null

#!/usr/bin/env bash
# Set up nixgold on Debian 12 (or Ubuntu 22.04+): system packages and a .venv in the repo.
#   bash scripts/setup.sh         # to run nixgold (packer, python)
#   bash scripts/setup.sh --dev   # also what the tests need (nix, shellcheck, qemu, debootstrap, ...)
set -euo pipefail

cd "$(dirname "$0")/.."
dev=false
case "${1:-}" in
  --dev) dev=true ;;
  "") ;;
  *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=(python3 python3-venv python3-pip git ca-certificates openssh-client
  # Debian's packer is 1.6.6 (the "bundled" dialect); HashiCorp's packer >= 1.10 is used when present.
  packer)
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
echo "[setup] done: .venv/bin/invoke --list"

#!/usr/bin/env bash
# trove: move interrupts onto the housekeeping CPUs, away from the shard CPUs.
#
# An interrupt delivered to a shard CPU stops that shard for the handler and its softirq,
# however well the CPU is isolated otherwise. This script writes the housekeeping CPU list
# into /proc/irq/N/smp_affinity_list for every interrupt (or only those of the NICs named
# with --nic). Interrupts whose affinity the kernel manages refuse the write; they are
# counted and left alone (isolcpus=managed_irq keeps them off isolated CPUs where it can).
#
# Usage:   irq-affinity.sh [--dry-run] [--nic IFACE]... HOUSEKEEPING_CPUS
#          HOUSEKEEPING_CPUS is a kernel CPU list, e.g. 0,4,8,12 (`trove tune cpus` prints it).
# Verify:  trove tune check (the "nic irq affinity" row), or cat /proc/irq/*/smp_affinity_list
# Revert:  irq-affinity.sh "$(cat /sys/devices/system/cpu/online)"   (every CPU again), or reboot.
#
# The change lasts until the next reboot, and irqbalance (if it runs) moves interrupts
# again unless the shard CPUs are in its IRQBALANCE_BANNED_CPULIST.

set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] [--nic IFACE]... HOUSEKEEPING_CPUS  (e.g. $0 --nic eth0 0,4)" >&2
  exit 2
}

dry_run=0
nics=()
cpus=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --nic)
      [[ $# -ge 2 ]] || usage
      nics+=("$2")
      shift
      ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *)
      [[ -z $cpus ]] || usage
      cpus="$1"
      ;;
  esac
  shift
done

if [[ ! $cpus =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]]; then
  echo "HOUSEKEEPING_CPUS must be a kernel CPU list such as 0,4,8,12 or 0-1, not '$cpus'" >&2
  usage
fi

# The names an interface's interrupts carry in /proc/interrupts: its own, and its device's
# (virtio2-input.0, i40e-eth0-TxRx-3, mlx5_comp0@pci:0000:3b:00.0).
nic_names=()
for nic in "${nics[@]}"; do
  if [[ ! -e /sys/class/net/$nic ]]; then
    echo "no network interface '$nic' (see ls /sys/class/net)" >&2
    exit 2
  fi
  nic_names+=("$nic")
  if [[ -L /sys/class/net/$nic/device ]]; then
    nic_names+=("$(basename "$(readlink "/sys/class/net/$nic/device")")")
  fi
done

# Whether interrupt $1 belongs to one of the named NICs (all interrupts when none is named).
selected() {
  [[ ${#nic_names[@]} -eq 0 ]] && return 0
  local line name
  line=$(grep -E "^ *$1:" /proc/interrupts || true)
  for name in "${nic_names[@]}"; do
    if [[ $line =~ (^|[^[:alnum:]])"$name"([^[:alnum:]]|$) ]]; then
      return 0
    fi
  done
  return 1
}

moved=0
kept=0
managed=0
for dir in /proc/irq/[0-9]*; do
  irq=${dir##*/}
  selected "$irq" || continue
  current=$(cat "$dir/smp_affinity_list" 2>/dev/null || echo "?")
  if [[ $current == "$cpus" ]]; then
    kept=$((kept + 1))
  elif [[ $dry_run -eq 1 ]]; then
    echo "irq $irq: $current -> $cpus"
    moved=$((moved + 1))
  elif echo "$cpus" > "$dir/smp_affinity_list" 2>/dev/null; then
    moved=$((moved + 1))
  else
    managed=$((managed + 1))
  fi
done

verb="moved"
[[ $dry_run -eq 1 ]] && verb="would move"
echo "$verb $moved interrupts to CPUs $cpus; $kept already there; $managed kernel-managed, left alone"
if pgrep -x irqbalance >/dev/null 2>&1; then
  echo "irqbalance is running: ban the shard CPUs (IRQBALANCE_BANNED_CPULIST) or it moves them back" >&2
fi

#!/usr/bin/env bash
# netns-lab.sh — N fake "hosts" (network namespaces) on one private bridge, for embedkv
# multi-host tests (mDNS discovery among them). Adapted from the verified lab in
# ../shared/tools (up/down/exec/addr/cut/heal/status only). Needs root and iproute2.
#
#   netns-lab.sh up N          create ${P}ns1..${P}nsN, 10.77.0.(10+i)/24 on eth0,
#                              joined by bridge ${P}br0 (not connected to any real NIC)
#   netns-lab.sh down          remove everything this lab created (idempotent)
#   netns-lab.sh exec I CMD..  run CMD inside host I  (= ip netns exec ${P}nsI CMD..)
#   netns-lab.sh addr I        print host I's address
#   netns-lab.sh cut I | heal I        isolate host I from all (host-side veth down/up)
#   netns-lab.sh status
# Env: EKLAB_PREFIX (default "ek"; lets several labs coexist: tests use a random one).
set -euo pipefail
P=${EKLAB_PREFIX:-ek}
BR=${P}br0
ns()   { echo "${P}ns$1"; }
veth() { echo "${P}v$1"; }
addr() { echo "10.77.0.$((10 + $1))"; }
die()  { echo "netns-lab: $*" >&2; exit 1; }

lab_down() {
  local nss n v
  nss=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${P}ns[0-9]+$" || true)
  for n in $nss; do   # test processes still running inside the lab's hosts
    ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  # delete veths first: synchronous, whereas `ip netns del` frees its devices asynchronously
  for v in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${P}v[0-9]+$" || true); do
    ip link del "$v" 2>/dev/null || true
  done
  for n in $nss; do ip netns del "$n" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
}

lab_up() {
  local n=$1 i
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up N: N must be 1..200"
  lab_down
  ip link add "$BR" type bridge mcast_snooping 0 stp_state 0 forward_delay 0
  ip link set "$BR" up
  for ((i = 1; i <= n; i++)); do
    ip netns add "$(ns $i)"
    ip link add "$(veth $i)" type veth peer name eth0 netns "$(ns $i)"
    ip link set "$(veth $i)" master "$BR"
    ip link set "$(veth $i)" up
    ip -n "$(ns $i)" link set lo up
    ip -n "$(ns $i)" addr add "$(addr $i)/24" dev eth0
    ip -n "$(ns $i)" link set eth0 multicast on up
    # so that sockets sending to 224.0.0.251 without IP_MULTICAST_IF have a route
    ip -n "$(ns $i)" route add 224.0.0.0/4 dev eth0
  done
}

cmd=${1:-}; shift || true
case "$cmd" in
  up)     lab_up "${1:?up N}" ;;
  down)   lab_down ;;
  exec)   i=${1:?exec I CMD}; shift; exec ip netns exec "$(ns $i)" "$@" ;;
  addr)   addr "${1:?addr I}" ;;
  cut)    ip link set "$(veth ${1:?cut I})" down ;;
  heal)   ip link set "$(veth ${1:?heal I})" up ;;
  status) ip -br link show master "$BR" 2>/dev/null || echo "no lab ($BR missing)"
          ip netns list | grep -E "^${P}ns" || true ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac

#!/bin/sh
# Boot every guest image under QEMU (microvm + KVM) and check serial output and exit status.
# usage: GuestImages/tools/qemu-smoke.sh   (after make -C GuestImages; needs qemu-system-x86)
# netecho is checked only when run as root (it needs a TAP device in a private netns).
set -u
D=$(cd "$(dirname "$0")/.." && pwd)
OUT=$D/out
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; ip netns del gi-smoke 2>/dev/null' EXIT
ACCEL=${ACCEL:--enable-kvm}
Q="qemu-system-x86_64 $ACCEL -M microvm,acpi=off,auto-kernel-cmdline=off -m 256M -nodefaults -no-user-config \
   -nographic -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 \
   -global virtio-mmio.force-legacy=false"
fails=0
# check NAME EXPECTED_STATUS EXPECTED_LAST_LINE_PREFIX -- qemu args...
check() {
	name=$1 want=$2 line=$3; shift 3
	timeout 120 $Q "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
	rc=$?
	last=$(tail -n 1 "$TMP/$name.out" | tr -d '\r')
	case "$last" in
	"$line"*) ok=1 ;;
	*) ok=0 ;;
	esac
	if [ "$rc" = "$want" ] && [ $ok = 1 ]; then
		echo "ok   $name ($last)"
	else
		echo "FAIL $name: status $rc (want $want), last line '$last' (want '$line...')"
		sed 's/^/     | /' "$TMP/$name.out" | tail -n 5
		fails=$((fails + 1))
	fi
}
truncate -s 64M "$TMP/disk.img"
BLK="-device virtio-blk-device,drive=d0 -drive id=d0,file=$TMP/disk.img,format=raw,if=none"
check hello 1 "HELLO hello world" -kernel "$OUT/hello.elf" -append "hello world"
check hello-fault 7 "FAIL exception vec=6" -kernel "$OUT/hello.elf" -append "fault=ud"
check memtouch 1 "PASS passes=200" -kernel "$OUT/memtouch.elf" -append "size=64M passes=200 heartbeat=100"
check memtouch-corrupt 3 "FAIL page=" -kernel "$OUT/memtouch.elf" -append "size=4M passes=5 corrupt-after=2"
check smp 1 "PASS cpus=2" -smp 2 -kernel "$OUT/smp.elf" -append "cpus=2"
check blktest 1 "PASS blocks=16384" $BLK -kernel "$OUT/blktest.elf" -append "probe"
check blktest-verify 1 "PASS blocks=16384" $BLK -kernel "$OUT/blktest.elf" -append "probe verify-only"
check blktest-loop 1 "PASS seq=100" $BLK -kernel "$OUT/blktest.elf" -append "probe loop count=100 blocks=10"
check blktest-ro 1 "PASS readonly" -device virtio-blk-device,drive=d0 \
	-drive id=d0,file="$TMP/disk.img",format=raw,if=none,readonly=on -kernel "$OUT/blktest.elf" -append "probe readonly-check"
check virtiofuzz 1 "PASS fuzz" $BLK -kernel "$OUT/virtiofuzz.elf" -append "probe"
check timecheck 1 "PASS time" -kernel "$OUT/timecheck.elf" -append "ticks=2 tick-ms=500"
if [ "$(id -u)" = 0 ] && ip netns add gi-smoke 2>/dev/null; then
	ip netns exec gi-smoke sh -c 'ip tuntap add gitap0 mode tap && ip addr add 10.99.0.1/24 dev gitap0 && ip link set gitap0 up'
	( sleep 4; ip netns exec gi-smoke ping -c 1 -W 5 10.99.0.2 >/dev/null
	  ip netns exec gi-smoke python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b'ping', ('10.99.0.2', 7)); print(s.recvfrom(64)[0])" >"$TMP/udp.out" 2>&1 ) &
	Q="ip netns exec gi-smoke $Q"
	check netecho 1 "PASS echoed=1" -netdev tap,id=n0,ifname=gitap0,script=no,downscript=no \
		-device virtio-net-device,netdev=n0 -kernel "$OUT/netecho.elf" -append "probe ip=10.99.0.2 count=1"
	wait
else
	echo "skip netecho (needs root for a TAP device)"
fi
[ $fails = 0 ] && echo "all ok" || echo "$fails failed"
[ $fails = 0 ]

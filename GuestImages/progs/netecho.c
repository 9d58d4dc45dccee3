/*
 * netecho.elf — virtio-net responder (ring 3, polled).
 *   virtio_mmio.device=... | probe   where the device is
 *   ip=A.B.C.D     our IPv4 address (default 10.0.2.15)
 *   port=N         UDP echo port (default 7)
 *   mac=xx:..      MAC if the device offers none (default 52:54:00:12:34:56)
 *   count=N        after N UDP echoes print "PASS echoed=N" and exit 0
 *   quiet          no per-packet lines
 * Output: "NET UP <ip> <mac>", then per packet "ARP reply to=<ip>",
 *         "ICMP echo from=<ip> id=<id> seq=<seq>", "UDP echo from=<ip>:<port> len=<n>".
 * Sends one gratuitous ARP at start. The responder itself is runtime/netecho.h.
 */
#include "rt.h"
#include "netecho.h"

int main(void)
{
	net_echo_args();
	u64 count = arg_u64("count", 0);
	net_echo_start();
	for (;;) {
		if (!net_echo_poll()) {
			cpu_relax();
			continue;
		}
		if (count && net_echoed >= count) {
			net_echo_drain_tx(); /* let the last reply leave before exiting */
			printf("PASS echoed=%lu\n", net_echoed);
			return EXIT_PASS;
		}
	}
}

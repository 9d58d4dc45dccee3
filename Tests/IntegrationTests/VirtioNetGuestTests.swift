import Foundation
import Glibc
import Harness
import Testing
import Machine

/// netecho.elf behind a TAP: ARP, ICMP and UDP through swiftvmm's virtio-net.
@Suite("virtio-net with guests", .serialized)
struct VirtioNetGuestTests {
    @Test("netecho answers ping and UDP echo through a TAP in a private network namespace")
    func pingAndUDPEcho() throws {
        let net = try TestNetwork()
        let child = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "run",
                                               "--kernel", Paths.guest("netecho.elf"), "--memory", "64M", "--name", "echo-vm",
                                               "--net", "tap=\(net.tap)", "--cmdline", "ip=\(TestNetwork.guestIP) count=3"])
        defer { child.signal(SIGKILL); _ = child.wait(timeout: 10); net.delete() }
        // The MAC is generated from the VM name (first NIC).
        let mac = VirtioNet.format(VirtioNet.generatedMAC(vmName: "echo-vm", index: 0))
        #expect(child.waitFor("NET UP \(TestNetwork.guestIP) \(mac)\n", timeout: 30), "\(child.transcript)")

        let ping = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
        #expect(ping.contains("3 received"), "\(ping)")

        let fd = try net.udpSocket()
        defer { close(fd) }
        for (i, size) in [1, 512, 1472].enumerated() {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ i) }
            let answer = TestNetwork.udpEcho(fd, payload)
            #expect(answer == payload, "UDP echo of \(size) bytes: \(answer?.count ?? -1) bytes back")
        }
        #expect(child.wait(timeout: 30) == 1, "\(child.transcript)")
        #expect(child.stdout.contains("PASS echoed=3"))
    }

    @Test("swiftvmm creates a missing TAP with the given MAC; it keeps working after moving into a namespace")
    func createdTAPMovesIntoNamespace() throws {
        let net = try TestNetwork(tap: false)
        let child = try Child.swiftvmm(["run", "--kernel", Paths.guest("netecho.elf"), "--memory", "64M",
                                        "--net", "tap=\(net.tap),mac=52:54:00:ab:cd:ef",
                                        "--cmdline", "ip=\(TestNetwork.guestIP) count=1"])
        defer { child.signal(SIGKILL); _ = child.wait(timeout: 10); net.delete() }
        #expect(child.waitFor("NET UP \(TestNetwork.guestIP) 52:54:00:ab:cd:ef\n", timeout: 30), "\(child.transcript)")
        try TestNetwork.run(TestNetwork.ip, ["link", "set", net.tap, "netns", net.namespace])
        try net.configure(net.tap)
        let ping = try net.exec(["ping", "-c", "2", "-W", "2", TestNetwork.guestIP])
        #expect(ping.contains("2 received"), "\(ping)")
        let fd = try net.udpSocket()
        defer { close(fd) }
        #expect(TestNetwork.udpEcho(fd, Array("moved".utf8)) == Array("moved".utf8))
        #expect(child.wait(timeout: 30) == 1, "\(child.transcript)")
    }

    @Test("an interface that is not a TAP is refused with one line naming it")
    func nonTAPRefused() throws {
        let net = try TestNetwork(tap: false)
        defer { net.delete() }
        let c = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "run", "--kernel",
                                           Paths.guest("netecho.elf"), "--net", "tap=lo"])
        let status = c.wait(timeout: 30)
        #expect(status != nil && status != 0 && status != 1, "\(c.transcript)")
        #expect(c.stderr.split(separator: "\n").count == 1 && c.stderr.contains("lo") && c.stderr.contains("not a TAP"), "\(c.stderr)")
    }
}

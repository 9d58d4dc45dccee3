import Foundation
import Glibc
import Testing
import Machine

/// A private network namespace for one test, holding (optionally) a persistent TAP with the
/// host side's address. Only TEST-NET-1 (192.0.2.0/24) addresses are used, inside the
/// namespace; deleting the namespace removes everything in it.
final class TestNetwork {
    static let hostIP = "192.0.2.1"
    static let guestIP = "192.0.2.2"

    let namespace: String
    let tap: String
    private var deleted = false

    /// `ip`, wherever this distribution keeps it.
    static let ip: String = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    } ?? "ip"

    /// Creates the namespace; with `tap`, also a persistent TAP in it, addressed and up.
    init(tap createTAP: Bool = true) throws {
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
        namespace = "svmtest-\(tag)"
        tap = "svt\(tag.prefix(8))"
        try Self.run(Self.ip, ["netns", "add", namespace])
        do {
            try Self.run(Self.ip, ["-n", namespace, "link", "set", "lo", "up"])
            if createTAP {
                try Self.run(Self.ip, ["-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap"])
                try configure(tap)
            }
        } catch {
            delete()
            throw error
        }
    }

    deinit { delete() }

    /// Gives `interface` (already in the namespace) the host address and brings it up.
    func configure(_ interface: String) throws {
        try Self.run(Self.ip, ["-n", namespace, "addr", "add", "\(Self.hostIP)/24", "dev", interface])
        try Self.run(Self.ip, ["-n", namespace, "link", "set", interface, "up"])
    }

    func delete() {
        guard !deleted else { return }
        deleted = true
        _ = try? Self.run(Self.ip, ["netns", "del", namespace])
    }

    struct CommandFailed: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs a command to completion; throws with its output when it fails.
    @discardableResult
    static func run(_ exe: String, _ args: [String], timeout: Double = 30) throws -> String {
        let c = try Child(exe, args, name: (exe as NSString).lastPathComponent)
        let status = c.wait(timeout: timeout)
        guard status == 0 else { throw CommandFailed(description: "\(exe) \(args.joined(separator: " ")) failed (\(String(describing: status))): \(c.stdout) \(c.stderr)") }
        return c.stdout
    }

    /// `ip netns exec NS cmd args…`
    @discardableResult
    func exec(_ args: [String], timeout: Double = 30) throws -> String {
        try Self.run(Self.ip, ["netns", "exec", namespace] + args, timeout: timeout)
    }

    /// Runs `body` on this thread inside the namespace, then returns to the original one.
    /// Sockets (and TAPs) created meanwhile stay in the namespace.
    func inside<T>(_ body: () throws -> T) throws -> T {
        typealias SetNS = @convention(c) (Int32, Int32) -> Int32
        guard let sym = dlsym(nil, "setns") else { throw CommandFailed(description: "setns is not available") }
        let setns = unsafeBitCast(sym, to: SetNS.self)
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(namespace)", O_RDONLY | O_CLOEXEC)
        defer { close(original); close(target) }
        guard original >= 0, target >= 0, setns(target, 0x4000_0000) == 0 else {
            throw CommandFailed(description: "cannot enter namespace \(namespace): \(String(cString: strerror(errno)))")
        }
        defer { _ = setns(original, 0x4000_0000) }
        return try body()
    }

    /// A UDP socket in the namespace, bound to the host address.
    func udpSocket() throws -> Int32 {
        try inside {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, Self.hostIP, &addr.sin_addr)
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard fd >= 0, r == 0 else { throw CommandFailed(description: "UDP socket: \(String(cString: strerror(errno)))") }
            return fd
        }
    }

    /// Sends `payload` to the guest's UDP echo port and returns the answer (nil on timeout).
    static func udpEcho(_ fd: Int32, _ payload: [UInt8], to ip: String = guestIP, port: UInt16 = 7, timeout: Int32 = 2000) -> [UInt8]? {
        guard udpSend(fd, payload, to: ip, port: port) else { return nil }
        return udpReceive(fd, timeout: timeout)
    }

    static func udpSend(_ fd: Int32, _ payload: [UInt8], to ip: String = guestIP, port: UInt16 = 7) -> Bool {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        inet_pton(AF_INET, ip, &addr.sin_addr)
        let sent = payload.withUnsafeBytes { p in
            withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, p.baseAddress, p.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            } }
        }
        return sent == payload.count
    }

    /// The next datagram on `fd`, or nil after `timeout` ms.
    static func udpReceive(_ fd: Int32, timeout: Int32 = 2000) -> [UInt8]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeout) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n >= 0 ? Array(buf[0..<n]) : nil
    }
}

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

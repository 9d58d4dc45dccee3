import Foundation
import Glibc

/// A private network namespace, holding (optionally) a persistent TAP with the host side's
/// address. Only TEST-NET-1 (192.0.2.0/24) addresses are used, inside the namespace; deleting
/// the namespace removes everything in it. The registry deletes it at exit if its owner did not.
public final class TestNetwork: @unchecked Sendable {
    public static let hostIP = "192.0.2.1"
    public static let guestIP = "192.0.2.2"

    public let namespace: String
    public let tap: String
    private let lock = NSLock()
    private var deleted = false

    /// `ip`, wherever this distribution keeps it.
    public static let ip: String = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    } ?? "ip"

    /// Creates the namespace (`prefix-<random>`); with `tap`, also a persistent TAP in it,
    /// addressed and up.
    public init(tap createTAP: Bool = true, prefix: String = "svmtest") throws {
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
        namespace = "\(prefix)-\(tag)"
        tap = "svt\(tag.prefix(8))"
        Registry.shared.track(namespace: namespace)
        do {
            try Self.run(Self.ip, ["netns", "add", namespace])
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
    public func configure(_ interface: String) throws {
        try Self.run(Self.ip, ["-n", namespace, "addr", "add", "\(Self.hostIP)/24", "dev", interface])
        try Self.run(Self.ip, ["-n", namespace, "link", "set", interface, "up"])
    }

    /// Deletes the namespace (and the TAP in it); later calls do nothing.
    public func delete() {
        lock.lock()
        let first = !deleted
        deleted = true
        lock.unlock()
        guard first else { return }
        Registry.deleteNamespace(namespace)
        Registry.shared.untrack(namespace: namespace)
    }

    /// Runs a command to completion; throws with its output when it fails.
    @discardableResult
    public static func run(_ exe: String, _ args: [String], timeout: Double = 30) throws -> String {
        try Harness.run(exe, args, timeout: timeout)
    }

    /// The argument vector that runs `argv` inside the namespace (`ip netns exec NS …`).
    public func command(_ argv: [String]) -> [String] { [Self.ip, "netns", "exec", namespace] + argv }

    /// `ip netns exec NS cmd args…`, run to completion.
    @discardableResult
    public func exec(_ args: [String], timeout: Double = 30) throws -> String {
        try Self.run(Self.ip, ["netns", "exec", namespace] + args, timeout: timeout)
    }

    /// Runs `body` on this thread inside the namespace, then returns to the original one.
    /// Sockets (and TAPs) created meanwhile stay in the namespace.
    public func inside<T>(_ body: () throws -> T) throws -> T {
        typealias SetNS = @convention(c) (Int32, Int32) -> Int32
        guard let sym = dlsym(nil, "setns") else { throw HarnessError("setns is not available") }
        let setns = unsafeBitCast(sym, to: SetNS.self)
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(namespace)", O_RDONLY | O_CLOEXEC)
        defer { close(original); close(target) }
        guard original >= 0, target >= 0, setns(target, 0x4000_0000) == 0 else {
            throw HarnessError("cannot enter namespace \(namespace): \(String(cString: strerror(errno)))")
        }
        defer { _ = setns(original, 0x4000_0000) }
        return try body()
    }

    /// A UDP socket in the namespace, bound to the host address.
    public func udpSocket() throws -> Int32 {
        try inside {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, Self.hostIP, &addr.sin_addr)
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard fd >= 0, r == 0 else { throw HarnessError("UDP socket: \(String(cString: strerror(errno)))") }
            return fd
        }
    }

    /// Sends `payload` to the guest's UDP echo port and returns the answer (nil on timeout).
    public static func udpEcho(_ fd: Int32, _ payload: [UInt8], to ip: String = guestIP, port: UInt16 = 7, timeout: Int32 = 2000) -> [UInt8]? {
        guard udpSend(fd, payload, to: ip, port: port) else { return nil }
        return udpReceive(fd, timeout: timeout)
    }

    public static func udpSend(_ fd: Int32, _ payload: [UInt8], to ip: String = guestIP, port: UInt16 = 7) -> Bool {
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
    public static func udpReceive(_ fd: Int32, timeout: Int32 = 2000) -> [UInt8]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeout) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n >= 0 ? Array(buf[0..<n]) : nil
    }
}

/// Two "hosts" on one machine: network namespaces `a` (192.0.2.1) and `b` (192.0.2.2) joined
/// by a veth pair (TEST-NET-1, used only inside them).
public final class TwoHosts: @unchecked Sendable {
    public let a: String, b: String
    private let lock = NSLock()
    private var deleted = false

    public init() throws {
        let tag = String(UInt32.random(in: 0...0xffffff), radix: 16)
        a = "svm-a-\(tag)"; b = "svm-b-\(tag)"
        Registry.shared.track(namespace: a)
        Registry.shared.track(namespace: b)
        let setup = """
        set -e
        ip netns add \(a); ip netns add \(b)
        ip link add va\(tag) netns \(a) type veth peer name vb\(tag) netns \(b)
        ip -n \(a) addr add 192.0.2.1/24 dev va\(tag); ip -n \(b) addr add 192.0.2.2/24 dev vb\(tag)
        ip -n \(a) link set va\(tag) up; ip -n \(b) link set vb\(tag) up
        ip -n \(a) link set lo up; ip -n \(b) link set lo up
        """
        let r = sh(setup)
        if r.status != 0 {
            delete()
            throw HarnessError("namespace setup failed: \(r.output)")
        }
    }

    /// Deletes both namespaces (and the veth pair); later calls do nothing.
    public func delete() {
        lock.lock()
        let first = !deleted
        deleted = true
        lock.unlock()
        guard first else { return }
        Registry.deleteNamespace(a)
        Registry.deleteNamespace(b)
        Registry.shared.untrack(namespace: a)
        Registry.shared.untrack(namespace: b)
    }

    deinit { delete() }
}

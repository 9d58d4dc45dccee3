import Foundation
import Glibc
import Testing
@testable import Machine

/// A network namespace for one test; a thread can step into it to create TAPs and sockets there.
private final class Namespace {
    let name = "svmunit-\(String(UInt32.random(in: 0..<UInt32.max), radix: 16))"
    static let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "ip"

    init() throws { try Self.run(["netns", "add", name]) }
    deinit { try? Self.run(["netns", "del", name]) }

    static func run(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ip)
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw VirtioError.config("ip \(args.joined(separator: " ")) failed") }
    }

    /// Runs `body` on this thread inside the namespace.
    func inside<T>(_ body: () throws -> T) throws -> T {
        typealias SetNS = @convention(c) (Int32, Int32) -> Int32
        guard let sym = dlsym(nil, "setns") else { throw VirtioError.config("no setns") }
        let setns = unsafeBitCast(sym, to: SetNS.self)
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        defer { close(original); close(target) }
        guard original >= 0, target >= 0, setns(target, 0x4000_0000) == 0 else { throw VirtioError.config("cannot enter \(name)") }
        defer { _ = setns(original, 0x4000_0000) }
        return try body()
    }
}

/// `ETH_P_ALL` (linux/if_ether.h, not imported by Glibc).
private let ethPAll: UInt16 = 0x0003

/// A raw packet socket on `interface` (call inside its namespace).
private func packetSocket(_ interface: String) throws -> Int32 {
    let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(ethPAll.bigEndian))
    guard fd >= 0 else { throw VirtioError.system("socket(AF_PACKET)", errno: errno) }
    var sll = [UInt8](repeating: 0, count: 20)           // struct sockaddr_ll
    sll.withUnsafeMutableBytes { p in
        p.storeBytes(of: UInt16(AF_PACKET), toByteOffset: 0, as: UInt16.self)
        p.storeBytes(of: ethPAll.bigEndian, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: Int32(if_nametoindex(interface)), toByteOffset: 4, as: Int32.self)
    }
    let r = sll.withUnsafeBytes { bind(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), 20) }
    guard r == 0 else { close(fd); throw VirtioError.system("bind(AF_PACKET)", errno: errno) }
    return fd
}

/// An IPv4/UDP frame to `mac` from source port `port` (distinct ports are distinct flows).
/// Sets `tap` up with IPv6 off, so that no router solicitation or MLD frame reaches the NICs.
private func bringUpQuietly(_ tap: String, in ns: Namespace) throws {
    try ns.inside {
        let fd = open("/proc/sys/net/ipv6/conf/\(tap)/disable_ipv6", O_WRONLY)
        if fd >= 0 { _ = write(fd, "1", 1); close(fd) }
    }
    try Namespace.run(["-n", ns.name, "link", "set", tap, "up"])
}

/// One UDP frame to `mac` per port, sent on the packet socket `fd`.
private func sendFrames(_ fd: Int32, to mac: [UInt8], ports: [UInt16]) {
    for port in ports {
        let frame = udpFrame(to: mac, port: port)
        _ = frame.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    }
}

private func udpFrame(to mac: [UInt8], port: UInt16) -> [UInt8] {
    var f = mac + [0x02, 0, 0, 0, 0, 9] + [0x08, 0x00]
    f += [0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]
    f += [UInt8(port >> 8), UInt8(port & 0xff), 0, 7, 0, 12, 0, 0, 1, 2, 3, 4]
    return f
}

@Suite("virtio-net on a real TAP", .serialized, .enabled(if: getuid() == 0, "needs root for TAP devices"))
struct VirtioNetTAPTests {
    @Test("a second NIC on a multi-queue TAP that no driver brought up takes no traffic while quiesced")
    func quiescedTargetQueueDetached() throws {
        let ns = try Namespace()
        let memory = try virtioTestMemory()
        let mac: [UInt8] = [0x52, 0x54, 0, 0x11, 0x22, 0x33]
        let tap = "svq\(ns.name.suffix(6))"
        let (source, target) = try ns.inside {
            (try makeNet(tap: tap, mac: mac, memory: memory, base: GuestAddress(0xd000_0000), interrupt: CountingInterrupt()),
             try makeNet(tap: tap, mac: mac, memory: memory, base: GuestAddress(0xd000_1000), interrupt: CountingInterrupt()))
        }
        defer { source.shutdown(); target.shutdown() }
        #expect(source.multiQueue && target.multiQueue)
        try bringUpQuietly(tap, in: ns)
        let driver = VirtioTestDriver(memory: memory, device: source)
        driver.initialize(queueSizes: [256, 16])
        for _ in 0..<128 { driver.submit(0, [(driver.allocate(2048), 2048, true)]) }

        // The target was built and quiesced before any driver used it: its queue is detached.
        target.quiesce()
        #expect(target.queueDetached)
        let fd = try ns.inside { try packetSocket(tap) }
        defer { close(fd) }
        sendFrames(fd, to: mac, ports: (0..<40).map { port in UInt16(1000 + port) })
        #expect(VirtioTestDriver.eventually { source.counters.rxFrames == 40 }, "source got \(source.counters.rxFrames) of 40")

        // Unquiesced, it takes its share again (flows are spread over both queues).
        target.unquiesce()
        #expect(!target.queueDetached)
        sendFrames(fd, to: mac, ports: (0..<40).map { port in UInt16(5000 + port * 7) })
        usleep(300_000)                      // a window for frames to reach either queue
        #expect(source.counters.rxFrames < 80, "every flow still went to the source")

        // A NIC in use keeps its queue while quiesced (a paused source loses nothing queued).
        source.quiesce()
        #expect(!source.queueDetached)
        source.unquiesce()
    }
    @Test("a source that committed leaves its queue of the shared TAP: every frame reaches the target; resumed after all, it takes the queue back")
    func committedSourceLeavesQueue() throws {
        let ns = try Namespace()
        // Two processes' guest memories: the source's and the target's.
        let memory = try virtioTestMemory(), targetMemory = try virtioTestMemory()
        let mac: [UInt8] = [0x52, 0x54, 0, 0x11, 0x22, 0x44]
        let tap = "svl\(ns.name.suffix(6))"
        let (source, target) = try ns.inside {
            (try makeNet(tap: tap, mac: mac, memory: memory, base: GuestAddress(0xd000_0000), interrupt: CountingInterrupt()),
             try makeNet(tap: tap, mac: mac, memory: targetMemory, base: GuestAddress(0xd000_0000), interrupt: CountingInterrupt()))
        }
        defer { source.shutdown(); target.shutdown() }
        try bringUpQuietly(tap, in: ns)
        let sourceDriver = VirtioTestDriver(memory: memory, device: source)
        sourceDriver.initialize(queueSizes: [256, 16])
        for _ in 0..<64 { sourceDriver.submit(0, [(sourceDriver.allocate(2048), 2048, true)]) }
        // The target as recv builds it: quiesced, its queue detached, until the guest runs there.
        target.quiesce()
        #expect(target.queueDetached)
        let targetDriver = VirtioTestDriver(memory: targetMemory, device: target)
        // The source pauses for stop-and-copy, commits and leaves; the target resumes the guest.
        source.quiesce()
        source.leave()
        #expect(source.queueDetached)
        target.unquiesce()
        targetDriver.initialize(queueSizes: [256, 16])
        for _ in 0..<64 { targetDriver.submit(0, [(targetDriver.allocate(2048), 2048, true)]) }
        let fd = try ns.inside { try packetSocket(tap) }
        defer { close(fd) }
        sendFrames(fd, to: mac, ports: (0..<40).map { port in UInt16(2000 + port * 13) })
        #expect(VirtioTestDriver.eventually { target.counters.rxFrames == 40 }, "target got \(target.counters.rxFrames) of 40")
        // The guest resumes on the source after all (an in-doubt hand-off, `cont`): queue back.
        source.unquiesce()
        #expect(!source.queueDetached)
    }
}

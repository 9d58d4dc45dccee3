import CKVM
import Foundation
import Glibc

/// A virtio-net NIC over a TAP interface (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header):
/// queue 0 receives, queue 1 transmits. No offloads; mergeable receive buffers when the driver
/// takes them. The worker polls the TAP only while the guest has posted receive buffers.
public final class VirtioNet: VirtioMMIODevice, AnnouncingDevice, @unchecked Sendable {
    /// What migrates besides the transport: the guest-visible MAC and link state.
    public struct State: Sendable, Equatable {
        public var mac: [UInt8]
        public var linkUp: Bool
        public init(mac: [UInt8], linkUp: Bool) { self.mac = mac; self.linkUp = linkUp }
    }

    public static let queueSize: UInt16 = 256
    /// `struct virtio_net_hdr_v1` (with num_buffers), the header of every frame on both sides.
    public static let headerSize = 12
    /// Largest Ethernet frame moved (64 KiB IP packet plus link header), header excluded.
    public static let maxFrame = 65_535 + 14 + 4
    /// Frames the VMM queued with `injectFrame` and the guest has not taken yet.
    public static let maxInjected = 64

    public enum Feature {
        public static let mac: UInt64 = 1 << 5
        public static let mergeableRxBuffers: UInt64 = 1 << 15
        public static let status: UInt64 = 1 << 16
    }

    static let rxQueue = 0, txQueue = 1
    static let linkUp: UInt16 = 1

    /// Name of the TAP interface (as the kernel reports it).
    public let interfaceName: String
    private let tapFD: Int32
    /// The TAP is multi-queue: other processes (a migration peer) may have queues on it too.
    let multiQueue: Bool
    /// Our queue is detached from the TAP (it receives nothing).
    private(set) var queueDetached = false

    // Under `lock`:
    private var mac: [UInt8]
    private var linkUp = true
    /// A frame (with header) read from the TAP that waits for receive buffers.
    private var pendingFrame: [UInt8]?
    private var injected: [[UInt8]] = []
    /// No receive buffers: the TAP is not polled until the guest posts some.
    private var rxStalled = false
    /// The TAP reported an error or hang-up (its interface was deleted): it is not read again.
    private var tapFailed = false
    private var rxBuffer = [UInt8](repeating: 0, count: VirtioNet.headerSize + VirtioNet.maxFrame)
    private var txBuffer = [UInt8](repeating: 0, count: VirtioNet.headerSize + VirtioNet.maxFrame)
    private var traffic = Counters()

    /// Frames moved and lost, for tests and diagnostics.
    public struct Counters: Sendable, Equatable {
        public var rxFrames = 0, txFrames = 0, rxDropped = 0, txDropped = 0
    }

    /// Opens (or creates, which needs CAP_NET_ADMIN) the TAP interface `tap`.
    public convenience init(tap: String, mac: [UInt8], memory: GuestMemory, base: GuestAddress,
                            interrupt: any VirtioInterrupt) throws(VirtioError) {
        let (fd, name, multiQueue) = try Self.openTAP(tap)
        do {
            try self.init(fd: fd, interfaceName: name, mac: mac, memory: memory, base: base, interrupt: interrupt,
                          multiQueue: multiQueue)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Builds the NIC over an already open frame descriptor (a TAP, or a datagram socket in tests)
    /// that carries a 12-byte virtio-net header before each frame. Takes ownership of `fd`.
    init(fd: Int32, interfaceName: String, mac: [UInt8], memory: GuestMemory, base: GuestAddress,
         interrupt: any VirtioInterrupt, multiQueue: Bool = false) throws(VirtioError) {
        guard mac.count == 6 else { throw .config("a MAC address has 6 bytes, not \(mac.count)") }
        guard mac[0] & 1 == 0 else { throw .config("MAC \(Self.format(mac)) is a multicast address") }
        self.tapFD = fd
        self.multiQueue = multiQueue
        self.interfaceName = interfaceName
        self.mac = mac
        let features = VirtioSpec.Feature.version1 | VirtioSpec.Feature.ringEventIdx | VirtioSpec.Feature.ringIndirectDesc
            | Feature.mac | Feature.status | Feature.mergeableRxBuffers
        try super.init(base: base, memory: memory, interrupt: interrupt, deviceID: VirtioSpec.DeviceID.net,
                       features: features, queueSizes: [Self.queueSize, Self.queueSize],
                       maxChainBytes: UInt64(Self.headerSize + Self.maxFrame))
        startWorker()
    }

    deinit { close(tapFD) }

    override var typeName: String { "virtio-net" }

    /// The device-specific state.
    public var state: State { lock.locked { State(mac: mac, linkUp: linkUp) } }

    /// The guest's MAC address.
    public var macAddress: [UInt8] { lock.locked { mac } }

    public var counters: Counters { lock.locked { traffic } }

    // MARK: TAP

    /// Attaches to the TAP interface `name`, creating it when absent. Multi-queue first, so that
    /// a migration target on the same host can attach while the source still holds it.
    static func openTAP(_ name: String) throws(VirtioError) -> (fd: Int32, name: String, multiQueue: Bool) {
        guard !name.isEmpty, name.utf8.count < Int(IFNAMSIZ) else {
            throw .tap(name: name, reason: "an interface name has 1 to \(IFNAMSIZ - 1) bytes")
        }
        let base = Int32(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        var actual = [CChar](repeating: 0, count: Int(IFNAMSIZ) + 1)
        var fd = ckvm_tap_open(name, Int16(base | Int32(IFF_MULTI_QUEUE)), &actual, actual.count)
        var multiQueue = true
        if fd == -EINVAL || fd == -EBUSY {
            // An existing single-queue TAP.
            fd = ckvm_tap_open(name, Int16(base), &actual, actual.count)
            multiQueue = false
        }
        guard fd >= 0 else {
            let e = -fd
            switch e {
            case EPERM, EACCES: throw .tap(name: name, reason: "permission denied (creating or attaching a TAP needs CAP_NET_ADMIN or ownership of it)")
            case EBUSY: throw .tap(name: name, reason: "is in use by another process")
            case ENOENT, ENODEV: throw .tap(name: name, reason: "/dev/net/tun is missing (load the tun module)")
            case EINVAL: throw .tap(name: name, reason: "cannot attach: it exists and is not a TAP interface")
            default: throw .tap(name: name, reason: "cannot attach: \(String(cString: strerror(e)))")
            }
        }
        var headerSize = Int32(headerSize)
        let r = ckvm_ioctl_ptr(fd, ckvm_req_TUNSETVNETHDRSZ(), &headerSize)
        guard r >= 0 else {
            close(fd)
            throw .tap(name: name, reason: "TUNSETVNETHDRSZ failed: \(String(cString: strerror(Int32(-r))))")
        }
        // No offloads: the guest negotiated none, so the TAP must hand over plain frames.
        _ = ckvm_ioctl_arg(fd, ckvm_req_TUNSETOFFLOAD(), 0)
        let actualName = actual.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? name }
        return (fd, actualName.isEmpty ? name : actualName, multiQueue)
    }

    /// `TUNSETQUEUE`, `_IOW('T', 217, int)` (not in the C shim).
    static let tunSetQueue: UInt = 0x4004_54d9

    /// Attaches or detaches our queue of a multi-queue TAP: a detached queue is skipped when
    /// the kernel spreads incoming frames over the TAP's queues.
    private func setQueueAttached(_ attached: Bool) {
        guard multiQueue, attached == queueDetached else { return }
        var request = [UInt8](repeating: 0, count: 40)   // struct ifreq: name, then flags
        let flags = Int16(attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE)
        request.withUnsafeMutableBytes { $0.storeBytes(of: flags, toByteOffset: Int(IFNAMSIZ), as: Int16.self) }
        let r = request.withUnsafeMutableBytes { ckvm_ioctl_ptr(tapFD, Self.tunSetQueue, $0.baseAddress) }
        if r < 0 {
            warn("cannot \(attached ? "attach" : "detach") our queue of TAP \(interfaceName): \(String(cString: strerror(Int32(-r))))")
            return
        }
        queueDetached = !attached
    }

    /// A NIC that no driver has brought up (a migration target waiting for its state) gives up
    /// its share of a multi-queue TAP while quiesced, so that the running source receives all
    /// the traffic during pre-copy; it takes it back when unquiesced.
    override func deviceQuiesceChanged() {
        if quiesced {
            if regs.status & VirtioSpec.Status.driverOK == 0 { setQueueAttached(false) }
        } else {
            setQueueAttached(true)
        }
    }

    /// 52:54:00 followed by three bytes of a hash of the VM name and NIC index: locally
    /// administered, unicast, and the same every time the VM starts.
    public static func generatedMAC(vmName: String, index: Int) -> [UInt8] {
        var h: UInt32 = 0x811c_9dc5
        for b in Array(vmName.utf8) + [0, UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: index >> 8)] {
            h = (h ^ UInt32(b)) &* 0x0100_0193
        }
        return [0x52, 0x54, 0x00, UInt8(truncatingIfNeeded: h >> 16), UInt8(truncatingIfNeeded: h >> 8), UInt8(truncatingIfNeeded: h)]
    }

    public static func format(_ mac: [UInt8]) -> String {
        mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
    }

    /// Parses `52:54:00:12:34:56`.
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    // MARK: VMM-originated frames

    /// Queues an Ethernet frame (no virtio header) for delivery into the guest's receive queue.
    /// Returns false when it is too big or too many frames wait already.
    @discardableResult
    public func injectFrame(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 14, bytes.count <= Self.maxFrame else { return false }
        let ok = lock.locked { () -> Bool in
            guard injected.count < Self.maxInjected else { return false }
            var frame = [UInt8](repeating: 0, count: Self.headerSize)
            frame += bytes
            injected.append(frame)
            return true
        }
        if ok { kick() }
        return ok
    }

    /// The RARP frame QEMU announces a moved guest with: broadcast, from the guest's MAC,
    /// ethertype 0x8035, reverse request with the MAC as sender and target, padded to 60 bytes.
    public static func announcementFrame(mac: [UInt8]) -> [UInt8] {
        var f = [UInt8](repeating: 0xff, count: 6) + mac + [0x80, 0x35]
        f += [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03]
        f += mac + [0, 0, 0, 0] + mac + [0, 0, 0, 0]
        f += [UInt8](repeating: 0, count: 60 - f.count)
        return f
    }

    /// Tells the network the guest is here now (after a migration): sends the RARP announcement
    /// out through the TAP at once, and twice more 100 ms and 300 ms later (as QEMU repeats it),
    /// so that switches and bridges learn the guest's new port.
    public func announce() {
        sendAnnouncement()
        for delay in [100, 300] {
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(delay)) { [self] in
                if !self.lock.locked({ self.stopping }) { self.sendAnnouncement() }
            }
        }
    }

    /// Sends one RARP announcement out through the TAP; false when the TAP refused it.
    @discardableResult
    public func sendAnnouncement() -> Bool {
        let frame = [UInt8](repeating: 0, count: Self.headerSize) + Self.announcementFrame(mac: macAddress)
        let n = frame.withUnsafeBytes { Glibc.write(tapFD, $0.baseAddress, $0.count) }
        return n == frame.count
    }

    // MARK: configuration space

    /// mac[6], status, max_virtqueue_pairs.
    override func deviceConfig() -> [UInt8] {
        var c = mac
        let status: UInt16 = linkUp ? Self.linkUp : 0
        c += [UInt8(status & 0xff), UInt8(status >> 8), 1, 0]
        return c
    }

    override func deviceReset() {
        pendingFrame = nil
        injected.removeAll()
        rxStalled = false
    }

    // MARK: work

    override func devicePollSet() -> (fds: [pollfd], timeout: Int32) {
        if tapFailed { return ([], injected.isEmpty ? -1 : 100) }
        if rxStalled || pendingFrame != nil {
            // Wait for buffers (a notification); re-check now and then for drivers that poll
            // without notifying.
            return ([], 100)
        }
        return ([pollfd(fd: tapFD, events: Int16(POLLIN), revents: 0)], -1)
    }

    override func deviceWork(_ wake: WakeReason) {
        if let revents = wake.extra.first, revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
            tapFailed = true
            warn("TAP \(interfaceName) reported an error or hang-up; no longer receiving from it")
        }
        if wake.queue(Self.txQueue) { transmit() }
        if wake.queue(Self.rxQueue) || wake.timedOut { rxStalled = false }
        receive()
    }

    private func transmit() {
        let q = Self.txQueue
        repeat {
            var sent = 0
            while let r = nextRequest(q) {
                switch r {
                case .bad(let head, _, _):
                    traffic.txDropped += 1
                    complete(q, head: head, length: 0)
                case .chain(let c):
                    send(c)
                    complete(q, head: c.head, length: 0)
                }
                sent += 1
                if sent % 64 == 0 { notifyUsed(q) }
            }
            notifyUsed(q)
        } while moreAvailable(q)
    }

    /// Writes one transmit chain to the TAP, with a zeroed header (no offloads were negotiated,
    /// so whatever the guest put there is not passed on).
    private func send(_ chain: DescriptorChain) {
        guard chain.writableLength == 0, chain.readableLength >= UInt64(Self.headerSize),
              chain.readableLength <= UInt64(Self.headerSize + Self.maxFrame) else {
            traffic.txDropped += 1
            stats.badChains += 1
            return
        }
        let total = Int(chain.readableLength)
        let ok = txBuffer.withUnsafeMutableBytes { buf -> Bool in
            guard let dst = buf.baseAddress else { return false }
            var at = 0
            for s in chain.segments where s.length > 0 {
                guard let src = memory.pointer(s.address, length: UInt64(s.length)) else { return false }
                dst.advanced(by: at).copyMemory(from: src, byteCount: Int(s.length))
                at += Int(s.length)
            }
            for i in 0..<Self.headerSize { buf[i] = 0 }
            while true {
                let n = Glibc.write(tapFD, dst, total)
                if n < 0 && errno == EINTR { continue }
                return n == total
            }
        }
        if ok { traffic.txFrames += 1 } else { traffic.txDropped += 1 }
    }

    private enum Delivery { case delivered, noBuffers, dropped }

    private func receive() {
        var delivered = 0
        // One more look at the ring per frame that found too few buffers: what is there may
        // simply be too small for it (the frame then waits for more).
        var retried = false
        while isLive && delivered < 256 {
            let frame: [UInt8]
            if let f = pendingFrame {
                frame = f
                pendingFrame = nil
            } else if !injected.isEmpty {
                frame = injected.removeFirst()
            } else if rxStalled || tapFailed {
                break
            } else {
                let n = rxBuffer.withUnsafeMutableBytes { Glibc.read(tapFD, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                        tapFailed = true
                        warn("reading TAP \(interfaceName) failed (\(n == 0 ? "end of file" : String(cString: strerror(errno)))); no longer receiving from it")
                    }
                    break
                }
                guard n >= Self.headerSize + 14 else { traffic.rxDropped += 1; continue }
                frame = Array(rxBuffer[0..<n])
            }
            switch deliver(frame) {
            case .delivered:
                delivered += 1
                retried = false
                traffic.rxFrames += 1
            case .dropped:
                retried = false
                traffic.rxDropped += 1
            case .noBuffers:
                pendingFrame = frame
                // Ask for a notification when buffers come; if some came meanwhile, go on.
                if !retried && moreAvailable(Self.rxQueue) {
                    retried = true
                    continue
                }
                rxStalled = true
            }
            if rxStalled { break }
        }
        if delivered > 0 { notifyUsed(Self.rxQueue) }
    }

    /// Copies `frame` (header included) into as many receive chains as it needs (one without
    /// mergeable buffers) and returns them to the used ring. Takes no chain unless the whole
    /// frame fits.
    private func deliver(_ frame: [UInt8]) -> Delivery {
        let q = Self.rxQueue
        let mergeable = regs.negotiated(Feature.mergeableRxBuffers)
        guard isLive, regs.queues[q].ready else { return .noBuffers }
        var probe = regs.queues[q]
        var chains: [DescriptorChain] = []
        var capacity: UInt64 = 0
        while capacity < UInt64(frame.count) && (mergeable || chains.isEmpty) {
            switch probe.pop(memory, maxChainBytes: maxChainBytes) {
            case .empty:
                return .noBuffers
            case .corrupt(let e):
                needsReset("queue \(q): \(e)")
                return .noBuffers
            case .badChain(let head, let e, _):
                stats.badChains += 1
                warn("queue \(q): receive buffer \(head) rejected: \(e)")
                guard chains.isEmpty else { return .dropped }
                regs.queues[q] = probe
                complete(q, head: head, length: 0)
                probe = regs.queues[q]
            case .chain(let c):
                guard c.readableLength == 0 else {
                    stats.badChains += 1
                    warn("queue \(q): receive buffer \(c.head) has device-readable parts")
                    guard chains.isEmpty else { return .dropped }
                    regs.queues[q] = probe
                    complete(q, head: c.head, length: 0)
                    probe = regs.queues[q]
                    continue
                }
                chains.append(c)
                capacity += c.writableLength
            }
        }
        guard capacity >= UInt64(frame.count) else { return .dropped }
        regs.queues[q].nextAvail = probe.nextAvail
        var bytes = frame
        // No offloads were negotiated: flags (DATA_VALID from the TAP) and GSO fields must be 0.
        for i in 0..<10 { bytes[i] = 0 }
        let buffers = UInt16(chains.count)
        bytes[10] = UInt8(buffers & 0xff)
        bytes[11] = UInt8(buffers >> 8)
        var at = 0
        for c in chains {
            var written = 0
            for s in c.segments where at < bytes.count {
                let n = min(Int(s.length), bytes.count - at)
                if (try? memory.write(bytes[at..<(at + n)], at: s.address)) == nil { break }
                at += n
                written += n
            }
            complete(q, head: c.head, length: UInt32(written))
        }
        return .delivered
    }

    // MARK: state

    override func deviceSaveState() -> StateNode {
        var n = StateNode(name: "device")
        n.set("mac", bytes: mac)
        n.set("link-up", linkUp)
        return n
    }

    override func deviceValidateState(_ node: StateNode) throws(StateError) -> () -> Void {
        let m = try node.bytes("mac")
        guard m.count == 6 else { throw .badSize(node: stateName, property: "mac", expected: 6, got: m.count) }
        guard m[0] & 1 == 0 else { throw .invalid(node: stateName, reason: "MAC \(Self.format(m)) is a multicast address") }
        let up = try node.bool("link-up")
        return { [self] in
            self.mac = m
            self.linkUp = up
            self.pendingFrame = nil
            self.rxStalled = false
        }
    }
}

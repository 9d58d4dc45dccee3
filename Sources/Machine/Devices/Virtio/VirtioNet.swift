import CLinux
import Foundation
import Glibc

/// A virtio-net NIC over a TAP interface (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header):
/// queue 0 receives, queue 1 transmits. No offloads; mergeable receive buffers when the driver
/// takes them. The worker polls the TAP only while the guest has posted receive buffers.
///
/// Its mutable properties are guarded by the lock of the `VirtioMMIODevice` it belongs to,
/// which makes every call into it; other threads reach it through `withDevice`.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    /// What migrates besides the transport: the guest-visible MAC and link state.
    public struct State: ComponentState {
        public var mac: [UInt8]
        public var linkUp: Bool
        public init(mac: [UInt8], linkUp: Bool) { self.mac = mac; self.linkUp = linkUp }

        public static var version: UInt32 { 1 }

        public func encode(into n: inout StateNode) {
            n.set("mac", bytes: mac)
            n.set("link-up", linkUp)
        }

        public init(decoding n: StateNode, version: UInt32) throws(StateError) {
            mac = try n.bytes("mac")
            guard mac.count == 6 else { throw .badSize(node: n.name, property: "mac", expected: 6, got: mac.count) }
            guard mac[0] & 1 == 0 else { throw .invalid(node: n.name, reason: "MAC \(VirtioNet.format(mac)) is a multicast address") }
            linkUp = try n.bool("link-up")
        }
    }

    public static var typeName: String { "virtio-net" }
    public static var kind: DeviceKind { .virtioNet }

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
    let tapFD: Int32
    /// The TAP is multi-queue: other processes (a migration peer) may have queues on it too.
    let multiQueue: Bool
    /// Our queue is detached from the TAP (it receives nothing).
    var queueDetached = false

    // Under `lock`:
    var mac: [UInt8]
    private var linkUp = true
    /// A frame (with header) read from the TAP that waits for receive buffers.
    private var pendingFrame: [UInt8]?
    /// A frame waits for receive buffers the guest has not posted.
    var waitsForBuffers: Bool { pendingFrame != nil }
    var injected: [[UInt8]] = []
    /// No receive buffers: the TAP is not polled until the guest posts some.
    private var rxStalled = false
    /// The TAP reported an error or hang-up (its interface was deleted): it is not read again.
    private(set) var tapFailed = false
    private var rxBuffer = [UInt8](repeating: 0, count: VirtioNet.headerSize + VirtioNet.maxFrame)
    private var txBuffer = [UInt8](repeating: 0, count: VirtioNet.headerSize + VirtioNet.maxFrame)
    var traffic = Counters()

    /// Frames moved and lost, for tests and diagnostics.
    public struct Counters: Sendable, Equatable {
        public var rxFrames = 0, txFrames = 0, rxDropped = 0, txDropped = 0
    }

    public let features: UInt64
    let memory: GuestMemory
    public var deviceID: UInt32 { VirtioSpec.DeviceID.net }
    public var queueSizes: [UInt16] { [Self.queueSize, Self.queueSize] }
    public var maxChainBytes: UInt64 { UInt64(Self.headerSize + Self.maxFrame) }

    /// Opens (or creates, which needs CAP_NET_ADMIN) the TAP interface `tap`, or takes a duplicate
    /// of `descriptor`, the queue of `tap` another process handed over: this NIC then never
    /// attaches or detaches it (it is the one queue the guest had, multi-queue or not).
    public convenience init(tap: String, mac: [UInt8], memory: GuestMemory, descriptor: Int32? = nil) throws(VirtioError) {
        let opened: (fd: Int32, name: String, multiQueue: Bool)
        if let descriptor { opened = try Self.adoptTAP(descriptor, name: tap) } else { opened = try Self.openTAP(tap) }
        let (fd, name, multiQueue) = opened
        do {
            try self.init(fd: fd, interfaceName: name, mac: mac, memory: memory, multiQueue: multiQueue)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Builds the NIC over an already open frame descriptor (a TAP, or a datagram socket in tests)
    /// that carries a 12-byte virtio-net header before each frame. Takes ownership of `fd`.
    public init(fd: Int32, interfaceName: String, mac: [UInt8], memory: GuestMemory, multiQueue: Bool = false) throws(VirtioError) {
        guard mac.count == 6 else { throw .config("a MAC address has 6 bytes, not \(mac.count)") }
        guard mac[0] & 1 == 0 else { throw .config("MAC \(Self.format(mac)) is a multicast address") }
        self.tapFD = fd
        self.multiQueue = multiQueue
        self.interfaceName = interfaceName
        self.mac = mac
        self.memory = memory
        self.features = VirtioSpec.Feature.version1 | VirtioSpec.Feature.ringEventIdx | VirtioSpec.Feature.ringIndirectDesc
            | Feature.mac | Feature.status | Feature.mergeableRxBuffers
    }

    deinit { close(tapFD) }

    // MARK: configuration space

    /// mac[6], status, max_virtqueue_pairs.
    public func configSpace() -> [UInt8] {
        var c = mac
        let status: UInt16 = linkUp ? Self.linkUp : 0
        c += [UInt8(status & 0xff), UInt8(status >> 8), 1, 0]
        return c
    }

    public func reset() {
        pendingFrame = nil
        injected.removeAll()
        rxStalled = false
    }

    // MARK: work

    public func pollSet() -> VirtioPollSet {
        if tapFailed { return VirtioPollSet(timeoutMs: injected.isEmpty ? -1 : 100) }
        if rxStalled || pendingFrame != nil {
            // Wait for buffers (a notification); re-check now and then for drivers that poll
            // without notifying.
            return VirtioPollSet(timeoutMs: 100)
        }
        return VirtioPollSet(fds: [tapFD])
    }

    public func work(_ wake: VirtioWakeReason, _ queues: any VirtioQueues) {
        if let revents = wake.extra.first, revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
            tapFailed = true
            queues.warn("TAP \(interfaceName) reported an error or hang-up; no longer receiving from it")
        }
        if wake.queue(Self.txQueue) { transmit(queues) }
        if wake.queue(Self.rxQueue) || wake.timedOut { rxStalled = false }
        receive(queues)
    }

    private func transmit(_ queues: any VirtioQueues) {
        let q = Self.txQueue
        repeat {
            var sent = 0
            while let r = queues.next(q) {
                switch r {
                case .bad(let head, _, _):
                    traffic.txDropped += 1
                    queues.complete(q, head: head, length: 0)
                case .chain(let c):
                    send(c, queues)
                    queues.complete(q, head: c.head, length: 0)
                }
                sent += 1
                if sent % 64 == 0 { queues.notifyUsed(q) }
            }
            queues.notifyUsed(q)
        } while queues.moreAvailable(q)
    }

    /// Writes one transmit chain to the TAP, with a zeroed header (no offloads were negotiated,
    /// so whatever the guest put there is not passed on).
    private func send(_ chain: DescriptorChain, _ queues: any VirtioQueues) {
        guard chain.writableLength == 0, chain.readableLength >= UInt64(Self.headerSize),
              chain.readableLength <= UInt64(Self.headerSize + Self.maxFrame) else {
            traffic.txDropped += 1
            queues.countBadChain()
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

    private func receive(_ queues: any VirtioQueues) {
        var delivered = 0
        // One more look at the ring per frame that found too few buffers: what is there may
        // simply be too small for it (the frame then waits for more).
        var retried = false
        while queues.isLive && delivered < 256 {
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
                        queues.warn("reading TAP \(interfaceName) failed (\(n == 0 ? "end of file" : String(cString: strerror(errno)))); no longer receiving from it")
                    }
                    break
                }
                guard n >= Self.headerSize + 14 else { traffic.rxDropped += 1; continue }
                frame = Array(rxBuffer[0..<n])
            }
            switch deliver(frame, queues) {
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
                if !retried && queues.moreAvailable(Self.rxQueue) {
                    retried = true
                    continue
                }
                rxStalled = true
            }
            if rxStalled { break }
        }
        if delivered > 0 { queues.notifyUsed(Self.rxQueue) }
    }

    /// Copies `frame` (header included) into as many receive chains as it needs (one without
    /// mergeable buffers) and returns them to the used ring. Takes no chain unless the whole
    /// frame fits.
    private func deliver(_ frame: [UInt8], _ queues: any VirtioQueues) -> Delivery {
        let q = Self.rxQueue
        let mergeable = queues.negotiated(Feature.mergeableRxBuffers)
        guard queues.isLive, queues.queueReady(q) else { return .noBuffers }
        var chains: [DescriptorChain] = []
        var capacity: UInt64 = 0
        /// A malformed receive buffer: returned empty when it comes first, else the frame is
        /// dropped and every chain looked at stays for the next frame.
        func reject(_ head: UInt16, _ why: String) -> Delivery? {
            queues.countBadChain()
            queues.warn("queue \(q): receive buffer \(head) rejected: \(why)")
            guard chains.isEmpty else {
                queues.unpop(q, count: chains.count + 1)
                return .dropped
            }
            queues.complete(q, head: head, length: 0)
            return nil
        }
        while capacity < UInt64(frame.count) && (mergeable || chains.isEmpty) {
            switch queues.pop(q) {
            case .empty:
                queues.unpop(q, count: chains.count)
                return .noBuffers
            case .corrupt(let e):
                queues.needsReset("queue \(q): \(e)")
                return .noBuffers
            case .badChain(let head, let e, _):
                if let d = reject(head, "\(e)") { return d }
            case .chain(let c):
                guard c.readableLength == 0 else {
                    if let d = reject(c.head, "it has device-readable parts") { return d }
                    continue
                }
                chains.append(c)
                capacity += c.writableLength
            }
        }
        guard capacity >= UInt64(frame.count) else {
            queues.unpop(q, count: chains.count)
            return .dropped
        }
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
            queues.complete(q, head: c.head, length: UInt32(written))
        }
        return .delivered
    }

    // MARK: state

    public func saveState() -> State { State(mac: mac, linkUp: linkUp) }

    public func validate(_ state: State) throws(StateError) {}

    public func restore(_ state: State) {
        mac = state.mac
        linkUp = state.linkUp
        pendingFrame = nil
        rxStalled = false
    }
}

/// A virtio-net NIC on the virtio-mmio transport.
public typealias VirtioNetDevice = VirtioMMIODevice<VirtioNet>

extension VirtioMMIODevice: AnnouncingDevice where Device == VirtioNet {
    /// The guest's MAC address.
    public var macAddress: [UInt8] { withDevice { $0.currentMAC } }
    /// Frames moved and lost.
    public var counters: VirtioNet.Counters { withDevice { $0.currentCounters } }
    /// Name of the TAP interface (as the kernel reports it).
    public var interfaceName: String { device.interfaceName }
    /// The TAP is multi-queue (a migration peer on this host can share it).
    public var multiQueue: Bool { device.multiQueue }
    /// Our queue of a multi-queue TAP is detached (it receives nothing).
    var queueDetached: Bool { withDevice { $0.queueDetached } }

    /// Queues an Ethernet frame (no virtio header) for delivery into the guest's receive queue.
    /// Returns false when it is too big or too many frames wait already.
    @discardableResult
    public func injectFrame(_ bytes: [UInt8]) -> Bool {
        let ok = withDevice { $0.queueInjected(bytes) }
        if ok { wakeWorker() }
        return ok
    }

    /// Sends one RARP announcement out through the TAP; false when the TAP refused it.
    @discardableResult
    public func sendAnnouncement() -> Bool {
        device.sendAnnouncement(mac: macAddress)
    }

    /// Tells the network the guest is here now (after a migration): sends the RARP announcement
    /// out through the TAP at once, and twice more 100 ms and 300 ms later (as QEMU repeats it),
    /// so that switches and bridges learn the guest's new port.
    /// The guest moved away: our queue of a shared multi-queue TAP is detached, so that the
    /// kernel forgets the flows it steered to us (to the queue that last sent on each) and
    /// hands every frame to the target's queue once it attaches — not to this process until it
    /// exits. Unquiescing attaches it again.
    public func leave() {
        withDevice { $0.setQueueAttached(false) }
    }

    public func announce() {
        sendAnnouncement()
        for delay in [100, 300] {
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(delay)) { [self] in
                if !self.isShutDown { self.sendAnnouncement() }
            }
        }
    }
}

import CLinux

/// One buffer of a descriptor chain, already checked to lie entirely in guest RAM.
public struct VirtioSegment: Sendable, Equatable {
    public var address: GuestAddress
    public var length: UInt32
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    public var writable: Bool

    public init(address: GuestAddress, length: UInt32, writable: Bool) {
        self.address = address; self.length = length; self.writable = writable
    }
}

/// A request the driver made available: the head index (what goes back in the used ring) and
/// its buffers in order, readable ones first.
public struct DescriptorChain: Sendable, Equatable {
    public var head: UInt16
    public var segments: [VirtioSegment]
    public var readableLength: UInt64
    public var writableLength: UInt64
}

/// What is wrong with a virtqueue or one of its chains.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    /// avail.idx ran more than the queue size ahead of what the device consumed.
    case availIndexJump(avail: UInt16, nextAvail: UInt16, size: UInt16)
    /// The avail ring names a descriptor beyond the table.
    case headOutOfRange(head: UInt16, size: UInt16)
    /// A ring is not (any longer) in guest RAM.
    case ringOutsideRAM
    /// More descriptors than the table holds: a loop or an over-long chain.
    case chainTooLong(head: UInt16)
    /// A `next` field points beyond the (direct or indirect) table.
    case descriptorIndexOutOfRange(UInt16)
    /// A buffer lies (partly) outside guest RAM.
    case bufferOutsideRAM(GuestAddress, length: UInt32)
    /// A device-readable buffer follows a device-writable one.
    case readableAfterWritable
    /// An indirect table refers to another indirect table.
    case nestedIndirect
    /// An indirect descriptor with a length that is not a whole, bounded table in RAM.
    case badIndirectTable(GuestAddress, length: UInt32)
    /// An indirect descriptor that also chains on (`NEXT`).
    case indirectWithNext
    /// The buffers add up to more than the device accepts in one request.
    case chainTooLarge(UInt64)

    /// Errors of the ring itself (not one request): the device must stop and ask for a reset.
    public var isRingCorruption: Bool {
        switch self {
        case .availIndexJump, .headOutOfRange, .ringOutsideRAM: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .availIndexJump(let a, let n, let s): return "avail idx \(a) is more than the queue size \(s) ahead of \(n)"
        case .headOutOfRange(let h, let s): return "avail ring names descriptor \(h) of a \(s)-entry table"
        case .ringOutsideRAM: return "a ring lies outside guest RAM"
        case .chainTooLong(let h): return "chain at descriptor \(h) is longer than its table (a loop?)"
        case .descriptorIndexOutOfRange(let i): return "descriptor index \(i) is outside its table"
        case .bufferOutsideRAM(let a, let l): return "buffer \(a)+\(l) is outside guest RAM"
        case .readableAfterWritable: return "a device-readable buffer follows a device-writable one"
        case .nestedIndirect: return "an indirect table refers to another indirect table"
        case .badIndirectTable(let a, let l): return "indirect table \(a)+\(l) is malformed"
        case .indirectWithNext: return "an indirect descriptor also has NEXT set"
        case .chainTooLarge(let n): return "chain buffers total \(n) bytes, more than the device accepts"
        }
    }
}

/// Result of taking the next request from the avail ring.
public enum PopResult: Sendable, Equatable {
    case empty
    case chain(DescriptorChain)
    /// The request is malformed: give `head` back (used length 0 or an error status).
    /// `last` is the chain's final buffer when the chain itself is sound (no loop, no bad
    /// index) and that buffer is device-writable and in RAM: where an error status can go.
    case badChain(head: UInt16, VirtqueueError, last: VirtioSegment? = nil)
    /// The ring is corrupt: the device must set DEVICE_NEEDS_RESET.
    case corrupt(VirtqueueError)
}

/// A split virtqueue as the device sees it: the register values the driver wrote and the
/// device's own progress through the rings. Plain data; all guest access goes through
/// `GuestMemory` (bounds-checked, and every write marks the dirty bitmap).
public struct SplitQueue: Sendable, Equatable {
    public static let descriptorSize: UInt64 = 16
    /// Largest indirect table accepted (entries).
    public static let maxIndirectEntries: UInt32 = 1024

    /// QueueNumMax: the largest size the device accepts.
    public var maxSize: UInt16
    /// QueueNum: entries in each ring (a power of two once ready).
    public var size: UInt16
    /// QueueReady: the driver enabled the queue and its configuration passed the checks.
    public var ready: Bool = false
    /// QueueDesc: the descriptor table (16 bytes per entry, 16-byte aligned).
    public var descTable = GuestAddress(0)
    /// QueueDriver: the avail ring (flags, idx, ring, used_event).
    public var availRing = GuestAddress(0)
    /// QueueDevice: the used ring (flags, idx, ring of (id, len), avail_event).
    public var usedRing = GuestAddress(0)
    /// Next avail-ring slot the device will read (free-running).
    public var nextAvail: UInt16 = 0
    /// Next used-ring slot the device will write (free-running; equals the published used.idx).
    public var nextUsed: UInt16 = 0
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    public var eventIdx = false
    /// used.idx when the driver was last notified (EVENT_IDX bookkeeping); nil = never.
    public var signalledUsed: UInt16?

    public init(maxSize: UInt16) {
        self.maxSize = maxSize
        self.size = maxSize
    }

    /// Back to the power-on state (device reset).
    public mutating func reset() { self = SplitQueue(maxSize: maxSize) }

    // MARK: layout

    public static func descTableBytes(_ size: UInt16) -> UInt64 { descriptorSize * UInt64(size) }
    /// flags, idx, ring[size], used_event.
    public static func availRingBytes(_ size: UInt16) -> UInt64 { 6 + 2 * UInt64(size) }
    /// flags, idx, ring[size] of (id, len), avail_event.
    public static func usedRingBytes(_ size: UInt16) -> UInt64 { 6 + 8 * UInt64(size) }

    /// Why this queue's configuration cannot be used, or nil when it can (size a power of two
    /// no larger than the maximum; each ring aligned and wholly inside guest RAM).
    public func configurationProblem(in memory: GuestMemory) -> String? {
        guard size > 0, size <= maxSize, size & (size - 1) == 0 else {
            return "queue size \(size) is not a power of two in 1...\(maxSize)"
        }
        guard descTable.raw % 16 == 0 else { return "descriptor table \(descTable) is not 16-byte aligned" }
        guard availRing.raw % 2 == 0 else { return "avail ring \(availRing) is not 2-byte aligned" }
        guard usedRing.raw % 4 == 0 else { return "used ring \(usedRing) is not 4-byte aligned" }
        guard memory.locate(descTable, length: Self.descTableBytes(size)) != nil else {
            return "descriptor table \(descTable)+\(Self.descTableBytes(size)) is outside guest RAM"
        }
        guard memory.locate(availRing, length: Self.availRingBytes(size)) != nil else {
            return "avail ring \(availRing)+\(Self.availRingBytes(size)) is outside guest RAM"
        }
        guard memory.locate(usedRing, length: Self.usedRingBytes(size)) != nil else {
            return "used ring \(usedRing)+\(Self.usedRingBytes(size)) is outside guest RAM"
        }
        return nil
    }

    // MARK: ring fields

    private func address(_ base: GuestAddress, _ offset: UInt64) -> GuestAddress { GuestAddress(base.raw &+ offset) }

    /// avail.idx, read with acquire ordering (everything the driver wrote before it is visible).
    public func availIndex(in memory: GuestMemory) -> UInt16? {
        guard let p = memory.pointer(address(availRing, 2), length: 2) else { return nil }
        return UInt16(littleEndian: clinux_load_acquire16(p.assumingMemoryBound(to: UInt16.self)))
    }


    // MARK: taking requests

    /// Takes the next request. `maxChainBytes` bounds the sum of its buffer lengths.
    public mutating func pop(_ memory: GuestMemory, maxChainBytes: UInt64) -> PopResult {
        guard ready, size > 0 else { return .empty }
        guard let avail = availIndex(in: memory) else { return .corrupt(.ringOutsideRAM) }
        let pending = avail &- nextAvail
        if pending == 0 { return .empty }
        guard pending <= size else { return .corrupt(.availIndexJump(avail: avail, nextAvail: nextAvail, size: size)) }
        let slot = UInt64(nextAvail % size)
        guard let head = try? memory.load(UInt16.self, at: address(availRing, 4 + 2 * slot)) else {
            return .corrupt(.ringOutsideRAM)
        }
        guard head < size else { return .corrupt(.headOutOfRange(head: head, size: size)) }
        nextAvail &+= 1
        let (result, last) = Self.walk(memory, head: head, table: descTable, tableSize: UInt32(size), maxChainBytes: maxChainBytes)
        switch result {
        case .success(let chain): return .chain(chain)
        case .failure(let e): return .badChain(head: head, e, last: last)
        }
    }

    /// Gives back the last `count` requests taken and not yet used (they will be taken again).
    public mutating func unpop(_ count: UInt16) { nextAvail &-= count }

    /// Descriptor `index` of the table at `table`: address, length, flags, next.
    private static func descriptor(_ memory: GuestMemory, _ table: GuestAddress, _ index: UInt32) -> (UInt64, UInt32, UInt16, UInt16)? {
        let at = GuestAddress(table.raw &+ UInt64(index) * descriptorSize)
        guard let p = memory.pointer(at, length: descriptorSize) else { return nil }
        return (UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)),
                UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)),
                UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
    }

    /// Follows the chain starting at `head`, through at most one indirect table. A bad buffer
    /// (outside RAM, wrong order, too much in total) fails the chain but the walk goes on to
    /// find its last buffer, returned with the failure when it is a writable buffer in RAM.
    static func walk(_ memory: GuestMemory, head: UInt16, table start: GuestAddress, tableSize size: UInt32,
                     maxChainBytes: UInt64) -> (Result<DescriptorChain, VirtqueueError>, VirtioSegment?) {
        var bufferError: VirtqueueError?
        var last: VirtioSegment?
        var lastInRAM = false
        var table = start
        var tableSize = size
        var budget = size
        var index = UInt32(head)
        var inIndirect = false
        var segments: [VirtioSegment] = []
        var readable: UInt64 = 0, writable: UInt64 = 0
        var sawWritable = false
        while true {
            guard budget > 0 else { return (.failure(.chainTooLong(head: head)), nil) }
            budget -= 1
            guard index < tableSize else { return (.failure(.descriptorIndexOutOfRange(UInt16(truncatingIfNeeded: index))), nil) }
            guard let (addr, len, flags, next) = descriptor(memory, table, index) else { return (.failure(.ringOutsideRAM), nil) }
            if flags & VirtioSpec.DescriptorFlag.indirect != 0 {
                guard !inIndirect else { return (.failure(.nestedIndirect), nil) }
                guard flags & VirtioSpec.DescriptorFlag.next == 0 else { return (.failure(.indirectWithNext), nil) }
                let entries = len / UInt32(descriptorSize)
                guard len > 0, len % UInt32(descriptorSize) == 0, entries <= maxIndirectEntries,
                      memory.locate(GuestAddress(addr), length: UInt64(len)) != nil else {
                    return (.failure(.badIndirectTable(GuestAddress(addr), length: len)), nil)
                }
                table = GuestAddress(addr)
                tableSize = entries
                budget = entries
                index = 0
                inIndirect = true
                continue
            }
            let isWritable = flags & VirtioSpec.DescriptorFlag.write != 0
            let segment = VirtioSegment(address: GuestAddress(addr), length: len, writable: isWritable)
            last = segment
            lastInRAM = memory.locate(GuestAddress(addr), length: UInt64(len)) != nil
            if !lastInRAM {
                bufferError = bufferError ?? .bufferOutsideRAM(GuestAddress(addr), length: len)
            }
            if isWritable {
                sawWritable = true
                writable += UInt64(len)
            } else {
                if sawWritable { bufferError = bufferError ?? .readableAfterWritable }
                readable += UInt64(len)
            }
            if readable + writable > maxChainBytes { bufferError = bufferError ?? .chainTooLarge(readable + writable) }
            if bufferError == nil { segments.append(segment) }
            guard flags & VirtioSpec.DescriptorFlag.next != 0 else { break }
            index = UInt32(next)
        }
        if let e = bufferError {
            let statusBuffer = last.flatMap { $0.writable && $0.length > 0 && lastInRAM ? $0 : nil }
            return (.failure(e), statusBuffer)
        }
        return (.success(DescriptorChain(head: head, segments: segments, readableLength: readable, writableLength: writable)), nil)
    }

    // MARK: returning requests

    /// Writes the used element (`head`, `length` bytes written by the device), then publishes
    /// it by storing used.idx with release ordering.
    public mutating func pushUsed(_ memory: GuestMemory, head: UInt16, length: UInt32) throws(VirtqueueError) {
        guard ready, size > 0 else { return }
        let slot = UInt64(nextUsed % size)
        let elem = address(usedRing, 4 + 8 * slot)
        guard let e = memory.pointer(elem, length: 8), let idx = memory.pointer(address(usedRing, 2), length: 2) else {
            throw .ringOutsideRAM
        }
        e.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        e.storeBytes(of: length.littleEndian, toByteOffset: 4, as: UInt32.self)
        memory.markDirty(elem, length: 8)
        nextUsed &+= 1
        clinux_store_release16(idx.assumingMemoryBound(to: UInt16.self), nextUsed.littleEndian)
        memory.markDirty(address(usedRing, 2), length: 2)
    }

    /// Whether the driver wants an interrupt for what was used since the last one
    /// (avail.flags without EVENT_IDX, used_event with it). Records the notification.
    public mutating func needsNotification(_ memory: GuestMemory) -> Bool {
        guard ready, size > 0 else { return false }
        clinux_fence()
        if eventIdx {
            let new = nextUsed
            let old = signalledUsed
            signalledUsed = new
            guard let old else { return true }
            guard let usedEvent = try? memory.load(UInt16.self, at: address(availRing, 4 + 2 * UInt64(size))) else { return true }
            // vring_need_event: notify when used_event lies in (old, new].
            return (new &- usedEvent &- 1) < (new &- old)
        }
        guard let flags = try? memory.load(UInt16.self, at: availRing) else { return true }
        return flags & VirtioSpec.availNoInterrupt == 0
    }

    /// Asks the driver to notify on the next request (avail_event = next avail with EVENT_IDX)
    /// and returns whether requests arrived meanwhile, so the caller never sleeps on work.
    public mutating func enableNotification(_ memory: GuestMemory) -> Bool {
        guard ready, size > 0 else { return false }
        if eventIdx {
            try? memory.store(nextAvail, at: address(usedRing, 4 + 8 * UInt64(size)))
        }
        clinux_fence()
        guard let a = availIndex(in: memory) else { return false }
        return a != nextAvail
    }
}

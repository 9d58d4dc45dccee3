import Synchronization

/// A device reachable through port I/O or MMIO. `offset` is relative to the range it registered.
/// Called from vCPU threads: implementations synchronise their own state.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// Dispatches guest accesses to the device owning an address range. Accesses nobody claims read
/// as all ones, are ignored when written, and are counted.
public final class Bus: Sendable {
    public struct Range: Sendable {
        public let base: UInt64
        public let length: UInt64
        let device: any BusDevice
    }

    public enum BusError: Error, CustomStringConvertible {
        case overlap(base: UInt64, length: UInt64)
        public var description: String {
            switch self {
            case .overlap(let b, let l): return "bus range 0x\(String(b, radix: 16))+\(l) overlaps another device"
            }
        }
    }

    public let name: String
    private let ranges = Mutex<[Range]>([])
    /// Accesses to addresses no device claims.
    public let unclaimed = Atomic<Int>(0)

    public init(name: String) { self.name = name }

    /// Registers `device` at `[base, base+length)`.
    public func register(_ device: any BusDevice, base: UInt64, length: UInt64) throws(BusError) {
        let ok = ranges.withLock { rs -> Bool in
            for r in rs where base < r.base + r.length && r.base < base + length { return false }
            rs.append(Range(base: base, length: length, device: device))
            rs.sort { $0.base < $1.base }
            return true
        }
        guard ok else { throw .overlap(base: base, length: length) }
    }

    func find(_ address: UInt64) -> (any BusDevice, UInt64)? {
        ranges.withLock { rs in
            var lo = 0, hi = rs.count
            while lo < hi {
                let mid = (lo + hi) / 2
                let r = rs[mid]
                if address < r.base { hi = mid } else if address >= r.base + r.length { lo = mid + 1 } else {
                    return (r.device, address - r.base)
                }
            }
            return nil
        }
    }

    /// Dispatches a read; returns false (and fills all ones) when nobody claims the address.
    @discardableResult
    public func read(_ address: UInt64, data: UnsafeMutableRawBufferPointer) -> Bool {
        if let (d, off) = find(address) {
            d.read(offset: off, data: data)
            return true
        }
        for i in data.indices { data[i] = 0xff }
        unclaimed.add(1, ordering: .relaxed)
        return false
    }

    @discardableResult
    public func write(_ address: UInt64, data: UnsafeRawBufferPointer) -> Bool {
        if let (d, off) = find(address) {
            d.write(offset: off, data: data)
            return true
        }
        unclaimed.add(1, ordering: .relaxed)
        return false
    }
}

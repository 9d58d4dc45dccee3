/// The guest-physical layout of a machine: RAM below the 32-bit MMIO hole, RAM above 4 GiB,
/// and the windows devices live in.
///
/// ```
/// 0x0000_0000 ..< min(size, 3 GiB)     RAM (low)
/// 0xC000_0000 ..< 0x1_0000_0000        32-bit MMIO hole:
///   0xD000_0000 + n·4 KiB              virtio-mmio device n (n = 0…18, IRQ 5 + n)
///   0xFEC0_0000                        IOAPIC
///   0xFEE0_0000                        local APICs
/// 0x1_0000_0000 ..< 4 GiB + rest       RAM (high), only when size > 3 GiB
/// ```
public struct MemoryMap: Sendable, Equatable {
    /// One contiguous range of guest RAM.
    public struct RAMRange: Sendable, Equatable {
        public var start: GuestAddress
        public var size: UInt64
        public var end: UInt64 { start.raw + size }
        public init(start: GuestAddress, size: UInt64) { self.start = start; self.size = size }
    }

    public static let pageSize: UInt64 = 4096
    /// Start of the 32-bit MMIO hole; RAM beyond this moves above 4 GiB.
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let highRAMStart: UInt64 = 0x1_0000_0000
    /// Base of the virtio-mmio device windows.
    public static let virtioMMIOBase: UInt64 = 0xD000_0000
    public static let virtioMMIOWindowSize: UInt64 = 0x1000
    /// First IRQ line handed to virtio-mmio devices (IOAPIC pins 5…23).
    public static let virtioFirstIRQ: UInt32 = 5
    /// Last IOAPIC pin (24 pins).
    public static let lastIRQ: UInt32 = 23
    /// Smallest machine swiftvmm builds; boot structures and a kernel need at least this.
    public static let minimumMemory: UInt64 = 16 << 20
    /// Largest machine swiftvmm builds (1 TiB).
    public static let maximumMemory: UInt64 = 1 << 40

    public let memorySize: UInt64
    public let ram: [RAMRange]

    public enum LayoutError: Error, Equatable, CustomStringConvertible {
        case tooSmall(UInt64)
        case tooLarge(UInt64)
        case notPageAligned(UInt64)
        public var description: String {
            switch self {
            case .tooSmall(let s): return "memory size \(s) bytes is too small (minimum \(MemoryMap.minimumMemory >> 20) MiB)"
            case .tooLarge(let s): return "memory size \(s) bytes is too large (maximum 1 TiB)"
            case .notPageAligned(let s): return "memory size \(s) bytes is not a multiple of 4 KiB"
            }
        }
    }

    public init(memorySize: UInt64) throws(LayoutError) {
        guard memorySize >= Self.minimumMemory else { throw .tooSmall(memorySize) }
        guard memorySize <= Self.maximumMemory else { throw .tooLarge(memorySize) }
        guard memorySize % Self.pageSize == 0 else { throw .notPageAligned(memorySize) }
        self.memorySize = memorySize
        if memorySize <= Self.mmioHoleStart {
            ram = [RAMRange(start: GuestAddress(0), size: memorySize)]
        } else {
            ram = [
                RAMRange(start: GuestAddress(0), size: Self.mmioHoleStart),
                RAMRange(start: GuestAddress(Self.highRAMStart), size: memorySize - Self.mmioHoleStart),
            ]
        }
    }

    /// The MMIO window and IRQ of the `index`th virtio-mmio device.
    public static func virtioWindow(index: Int) -> (base: GuestAddress, size: UInt64, irq: UInt32) {
        (GuestAddress(virtioMMIOBase + UInt64(index) * virtioMMIOWindowSize), virtioMMIOWindowSize,
         virtioFirstIRQ + UInt32(index))
    }

    /// Highest address of RAM below 4 GiB (exclusive).
    public var lowRAMEnd: UInt64 { ram[0].end }

    /// True when `[address, address+length)` lies entirely in guest RAM.
    public func isRAM(_ address: GuestAddress, length: UInt64) -> Bool {
        guard let end = address.adding(length) else { return false }
        return ram.contains { $0.start.raw <= address.raw && end.raw <= $0.end }
    }
}

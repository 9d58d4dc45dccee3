import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

@Suite("memory map: RAM below the 3 GiB hole, the rest above 4 GiB")
struct MemoryMapTests {
    typealias Range = MemoryMap.RAMRange

    @Test("a small machine is one RAM range from 0")
    func small() throws {
        let map = try MemoryMap(memorySize: 256 * MiB)
        #expect(map.memorySize == 256 * MiB)
        #expect(map.ram == [Range(start: GuestAddress(0), size: 256 * MiB)])
        #expect(map.lowRAMEnd == 256 * MiB)
        #expect(map.ram[0].end == 256 * MiB)
    }

    @Test("exactly 3 GiB still fits below the hole; one page more moves above 4 GiB")
    func holeBoundary() throws {
        let three = try MemoryMap(memorySize: 3 * GiB)
        #expect(three.ram == [Range(start: GuestAddress(0), size: 3 * GiB)])

        let more = try MemoryMap(memorySize: 3 * GiB + 4096)
        #expect(more.ram == [Range(start: GuestAddress(0), size: 3 * GiB),
                             Range(start: GuestAddress(4 * GiB), size: 4096)])
        #expect(more.lowRAMEnd == 3 * GiB)
    }

    @Test("5 GiB: 3 GiB low, 2 GiB from 4 GiB; sizes add up to the machine")
    func fiveGiB() throws {
        let map = try MemoryMap(memorySize: 5 * GiB)
        #expect(map.ram == [Range(start: GuestAddress(0), size: 3 * GiB),
                            Range(start: GuestAddress(4 * GiB), size: 2 * GiB)])
        #expect(map.ram.reduce(0) { $0 + $1.size } == 5 * GiB)
        #expect(map.ram[1].end == 6 * GiB)
    }

    @Test("the smallest and largest sizes are accepted; one page beyond either is refused")
    func limits() throws {
        #expect(try MemoryMap(memorySize: MemoryMap.minimumMemory).ram.count == 1)
        let top = try MemoryMap(memorySize: MemoryMap.maximumMemory)
        #expect(top.ram.last?.end == MemoryMap.maximumMemory + (MemoryMap.highRAMStart - MemoryMap.mmioHoleStart))

        #expect(throws: MemoryMap.LayoutError.tooSmall(MemoryMap.minimumMemory - 4096)) {
            try MemoryMap(memorySize: MemoryMap.minimumMemory - 4096)
        }
        #expect(throws: MemoryMap.LayoutError.tooSmall(0)) { try MemoryMap(memorySize: 0) }
        #expect(throws: MemoryMap.LayoutError.tooLarge(MemoryMap.maximumMemory + 4096)) {
            try MemoryMap(memorySize: MemoryMap.maximumMemory + 4096)
        }
        #expect(throws: MemoryMap.LayoutError.tooLarge(UInt64.max)) { try MemoryMap(memorySize: UInt64.max) }
    }

    @Test("sizes that are not a multiple of 4 KiB are refused")
    func unaligned() {
        #expect(throws: MemoryMap.LayoutError.notPageAligned(64 * MiB + 1)) { try MemoryMap(memorySize: 64 * MiB + 1) }
        #expect(throws: MemoryMap.LayoutError.notPageAligned(64 * MiB + 2048)) { try MemoryMap(memorySize: 64 * MiB + 2048) }
        #expect(throws: MemoryMap.LayoutError.notPageAligned(4 * GiB - 1)) { try MemoryMap(memorySize: 4 * GiB - 1) }
    }

    @Test("layout errors say what is wrong with the size")
    func descriptions() {
        #expect(MemoryMap.LayoutError.tooSmall(4096).description
                == "memory size 4096 bytes is too small (minimum 16 MiB)")
        #expect(MemoryMap.LayoutError.tooLarge(1 << 41).description.contains("maximum 1 TiB"))
        #expect(MemoryMap.LayoutError.notPageAligned(12345).description
                == "memory size 12345 bytes is not a multiple of 4 KiB")
    }

    @Test("isRAM: inside, at the edges, across the hole, beyond the end, and on address overflow")
    func isRAM() throws {
        let small = try MemoryMap(memorySize: 256 * MiB)
        #expect(small.isRAM(GuestAddress(0), length: 256 * MiB))
        #expect(small.isRAM(GuestAddress(256 * MiB - 1), length: 1))
        #expect(!small.isRAM(GuestAddress(256 * MiB - 1), length: 2))
        #expect(!small.isRAM(GuestAddress(256 * MiB), length: 1))
        #expect(!small.isRAM(GuestAddress(0), length: 256 * MiB + 1))

        let big = try MemoryMap(memorySize: 5 * GiB)
        #expect(big.isRAM(GuestAddress(3 * GiB - 8), length: 8))
        #expect(!big.isRAM(GuestAddress(3 * GiB - 4), length: 8))      // runs into the hole
        #expect(!big.isRAM(GuestAddress(3 * GiB), length: 1))          // in the hole
        #expect(!big.isRAM(GuestAddress(4 * GiB - 4), length: 8))      // hole → high RAM
        #expect(!big.isRAM(GuestAddress(0), length: 6 * GiB))          // spans both ranges
        #expect(big.isRAM(GuestAddress(4 * GiB), length: 2 * GiB))
        #expect(big.isRAM(GuestAddress(6 * GiB - 1), length: 1))
        #expect(!big.isRAM(GuestAddress(6 * GiB), length: 1))
        #expect(!big.isRAM(GuestAddress(UInt64.max - 1), length: 4))   // address + length overflows
        #expect(!big.isRAM(GuestAddress(4 * GiB), length: UInt64.max))
    }

    @Test("virtio windows: 4 KiB apart from 0xD000_0000 with IRQs from 5, all in the hole")
    func virtioWindows() throws {
        let w0 = MemoryMap.virtioWindow(index: 0)
        #expect(w0.base == GuestAddress(0xD000_0000))
        #expect(w0.size == 0x1000)
        #expect(w0.irq == 5)
        let w3 = MemoryMap.virtioWindow(index: 3)
        #expect(w3.base == GuestAddress(0xD000_3000))
        #expect(w3.irq == 8)

        let map = try MemoryMap(memorySize: 8 * GiB)
        for i in 0..<19 {                                           // IOAPIC pins 5…23
            let w = MemoryMap.virtioWindow(index: i)
            #expect(w.irq <= 23)
            #expect(!map.isRAM(w.base, length: 1))
            #expect(w.base.raw >= MemoryMap.mmioHoleStart && w.base.raw + w.size <= 0xFEC0_0000)
            if i > 0 { #expect(MemoryMap.virtioWindow(index: i - 1).base.raw + w.size == w.base.raw) }
        }
    }
}

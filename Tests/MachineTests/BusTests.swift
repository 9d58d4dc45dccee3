import Glibc
import Synchronization
import Testing
@testable import Machine

/// A bus device that records every access and answers reads with `tag, offset, offset+1, …`.
private final class RecordingDevice: BusDevice {
    enum Access: Equatable { case read(UInt64, Int), write(UInt64, [UInt8]) }
    let tag: UInt8
    let log = Mutex<[Access]>([])
    init(tag: UInt8) { self.tag = tag }
    var accesses: [Access] { log.withLock { $0 } }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        log.withLock { $0.append(.read(offset, data.count)) }
        for i in data.indices { data[i] = i == 0 ? tag : UInt8(truncatingIfNeeded: offset + UInt64(i)) }
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        log.withLock { $0.append(.write(offset, Array(data))) }
    }
}

/// Remembers the stop requests devices make.
private final class RecordingStopper: StopRequester {
    let requests = Mutex<[GuestStopRequest]>([])
    func requestStop(_ request: GuestStopRequest) { requests.withLock { $0.append(request) } }
    var all: [GuestStopRequest] { requests.withLock { $0 } }
}

private func busRead(_ bus: Bus, _ address: UInt64, _ count: Int) -> (Bool, [UInt8]) {
    var out = [UInt8](repeating: 0x5a, count: count)
    let claimed = out.withUnsafeMutableBytes { bus.read(address, data: $0) }
    return (claimed, out)
}

@discardableResult
private func busWrite(_ bus: Bus, _ address: UInt64, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { bus.write(address, data: $0) }
}

@Suite("bus: dispatch by range, unclaimed accesses, overlap refusal")
struct BusTests {
    @Test("accesses reach the device owning the address, with the offset into its range")
    func dispatch() throws {
        let bus = Bus(name: "pio")
        let a = RecordingDevice(tag: 0xa), b = RecordingDevice(tag: 0xb), c = RecordingDevice(tag: 0xc)
        try bus.register(c, base: 0x1000, length: 0x100)
        try bus.register(a, base: 0x3f8, length: 8)
        try bus.register(b, base: 0x60, length: 5)

        #expect(busRead(bus, 0x3fa, 1) == (true, [0xa]))
        #expect(busRead(bus, 0x3ff, 2) == (true, [0xa, 0x08]))
        #expect(busRead(bus, 0x60, 1) == (true, [0xb]))
        #expect(busRead(bus, 0x64, 4) == (true, [0xb, 5, 6, 7]))
        #expect(busWrite(bus, 0x1050, [1, 2, 3, 4]))
        #expect(busWrite(bus, 0x10ff, [9]))
        #expect(busWrite(bus, 0x3f8, [0x41]))

        #expect(a.accesses == [.read(2, 1), .read(7, 2), .write(0, [0x41])])
        #expect(b.accesses == [.read(0, 1), .read(4, 4)])
        #expect(c.accesses == [.write(0x50, [1, 2, 3, 4]), .write(0xff, [9])])
        #expect(bus.unclaimed.load(ordering: .relaxed) == 0)
        #expect(bus.name == "pio")
    }

    @Test("unclaimed reads fill all ones and unclaimed writes are dropped; both are counted")
    func unclaimed() throws {
        let bus = Bus(name: "mmio")
        let d = RecordingDevice(tag: 1)
        try bus.register(d, base: 0x100, length: 0x10)

        #expect(busRead(bus, 0xff, 4) == (false, [0xff, 0xff, 0xff, 0xff]))
        #expect(busRead(bus, 0x110, 2) == (false, [0xff, 0xff]))    // one past the end
        #expect(busRead(bus, 0, 8) == (false, [UInt8](repeating: 0xff, count: 8)))
        #expect(!busWrite(bus, 0x110, [1]))
        #expect(!busWrite(bus, UInt64.max, [1]))
        #expect(bus.unclaimed.load(ordering: .relaxed) == 5)
        #expect(d.accesses.isEmpty)
        #expect(busRead(Bus(name: "empty"), 0x3f8, 1) == (false, [0xff]))
    }

    @Test("a range overlapping a registered one is refused (front, back, inside, around); adjacent is fine")
    func overlap() throws {
        let bus = Bus(name: "pio")
        let first = RecordingDevice(tag: 1)
        try bus.register(first, base: 0x100, length: 0x10)
        let intruder = RecordingDevice(tag: 2)
        for (base, length) in [(0x0f8, 0x10), (0x10f, 0x10), (0x104, 2), (0x0f0, 0x100), (0x100, 0x10)] as [(UInt64, UInt64)] {
            do {
                try bus.register(intruder, base: base, length: length)
                Issue.record("overlapping range 0x\(String(base, radix: 16))+\(length) accepted")
            } catch {
                guard case .overlap(let b, let l) = error else { Issue.record("wrong error \(error)"); continue }
                #expect(b == base && l == length)
                #expect(error.description.contains("0x\(String(base, radix: 16))+\(length) overlaps"))
            }
        }
        try bus.register(RecordingDevice(tag: 3), base: 0x110, length: 4)   // right after
        try bus.register(RecordingDevice(tag: 4), base: 0x0f0, length: 0x10) // right before
        #expect(busRead(bus, 0x104, 1) == (true, [1]))
        #expect(busRead(bus, 0x110, 1) == (true, [3]))
        #expect(busRead(bus, 0x0ff, 1) == (true, [4]))
        #expect(intruder.accesses.isEmpty)
    }

    @Test("many devices registered out of order are each found; the gaps between them are not")
    func manyDevices() throws {
        let bus = Bus(name: "mmio")
        var order = Array(0..<64)
        var g = SystemRandomNumberGenerator()
        order.shuffle(using: &g)
        for i in order { try bus.register(RecordingDevice(tag: UInt8(i)), base: 0xd000_0000 + UInt64(i) * 0x1000, length: 0x200) }
        for i in 0..<64 {
            let base = 0xd000_0000 + UInt64(i) * 0x1000
            #expect(busRead(bus, base, 1) == (true, [UInt8(i)]))
            #expect(busRead(bus, base + 0x1ff, 1) == (true, [UInt8(i)]))
            #expect(busRead(bus, base + 0x200, 1).0 == false)
        }
        #expect(bus.unclaimed.load(ordering: .relaxed) == 64)
    }
}

@Suite("system ports: debug-exit, i8042 reset, CMOS clock")
struct SystemPortTests {
    @Test("debug-exit: a write of v is a stop request with value v, for 1-, 2- and 4-byte writes")
    func debugExit() throws {
        let stopper = RecordingStopper()
        let bus = Bus(name: "pio")
        try bus.register(DebugExit(stopper: stopper), base: DebugExit.port, length: 4)
        busWrite(bus, 0xf4, [0x31])
        busWrite(bus, 0xf4, [0x34, 0x12])
        busWrite(bus, 0xf4, [0x78, 0x56, 0x34, 0x12])
        busWrite(bus, 0xf4, [0])
        #expect(stopper.all == [.debugExit(value: 0x31), .debugExit(value: 0x1234),
                                .debugExit(value: 0x1234_5678), .debugExit(value: 0)])
        #expect(busRead(bus, 0xf4, 4) == (true, [0xff, 0xff, 0xff, 0xff]))
    }

    @Test("i8042: 0xFE on port 0x64 resets; other commands and data writes do not")
    func i8042() throws {
        let stopper = RecordingStopper()
        let bus = Bus(name: "pio")
        try bus.register(I8042(stopper: stopper), base: I8042.base, length: 5)
        busWrite(bus, 0x64, [0xd1])
        busWrite(bus, 0x60, [0xfe])
        busWrite(bus, 0x64, [])
        #expect(stopper.all.isEmpty)
        busWrite(bus, 0x64, [0xfe])
        #expect(stopper.all == [.reset])
        #expect(busRead(bus, 0x64, 1) == (true, [0x04]))       // status: system flag, buffers empty
        #expect(busRead(bus, 0x60, 2) == (true, [0x00, 0x00]))
    }

    func cmos(_ bus: Bus, _ index: UInt8) -> UInt8 {
        busWrite(bus, 0x70, [index])
        return busRead(bus, 0x71, 1).1[0]
    }

    static func bcd(_ v: Int32) -> UInt8 { UInt8((v / 10) * 16 + v % 10) }

    @Test("CMOS: the host's UTC time in BCD, and the status bytes a guest checks")
    func cmosClock() throws {
        let bus = Bus(name: "pio")
        try bus.register(CMOS(), base: CMOS.base, length: 2)
        #expect(cmos(bus, 0x0a) == 0x26)        // no update in progress
        #expect(cmos(bus, 0x0b) == 0x02)        // 24-hour, BCD
        #expect(cmos(bus, 0x0c) == 0x00)
        #expect(cmos(bus, 0x0d) == 0x80)        // valid
        #expect(cmos(bus, 0x8a) == 0x26)        // bit 7 (NMI disable) is not part of the index

        // Read the clock within one host second, so the comparison is exact.
        var matched = false
        for _ in 0..<5 where !matched {
            var before = time(nil)
            let fields = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map { cmos(bus, $0) }
            guard time(nil) == before else { continue }
            var t = tm()
            gmtime_r(&before, &t)
            let expected = [t.tm_sec, t.tm_min, t.tm_hour, t.tm_wday + 1, t.tm_mday, t.tm_mon + 1, t.tm_year % 100,
                            (t.tm_year + 1900) / 100].map(Self.bcd)
            #expect(fields == expected)
            for f in fields { #expect(f & 0x0f <= 9 && f >> 4 <= 9, "0x\(String(f, radix: 16)) is not BCD") }
            matched = true
        }
        #expect(matched)
        #expect(busRead(bus, 0x70, 1) == (true, [0xff]))
    }

    @Test("CMOS RAM from 0x0e keeps what is written; clock and status registers ignore writes")
    func cmosRAM() throws {
        let bus = Bus(name: "pio")
        try bus.register(CMOS(), base: CMOS.base, length: 2)
        busWrite(bus, 0x70, [0x20]); busWrite(bus, 0x71, [0x5a])
        busWrite(bus, 0x70, [0x7f]); busWrite(bus, 0x71, [0xa5])
        busWrite(bus, 0x70, [0x0d]); busWrite(bus, 0x71, [0x00])
        #expect(cmos(bus, 0x20) == 0x5a)
        #expect(cmos(bus, 0x7f) == 0xa5)
        #expect(cmos(bus, 0xa0) == 0x5a)        // index with NMI bit
        #expect(cmos(bus, 0x0d) == 0x80)
        #expect(cmos(bus, 0x21) == 0x00)
    }
}

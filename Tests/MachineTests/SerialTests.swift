import Synchronization
import Testing
@testable import Machine

/// Collects what the UART transmits.
private final class RecordingSink: SerialSink {
    let bytes = Mutex<[UInt8]>([])
    func write(_ b: UnsafeRawBufferPointer) { bytes.withLock { $0.append(contentsOf: b) } }
    var all: [UInt8] { bytes.withLock { $0 } }
}

/// Records every level the UART drives its interrupt line to.
private final class RecordingLine: InterruptLine {
    let levels = Mutex<[Bool]>([])
    func set(level: Bool) { levels.withLock { $0.append(level) } }
    /// The line's current level (low before the device ever drove it).
    var level: Bool { levels.withLock { $0.last ?? false } }
}

/// A UART with a recording sink and line, and byte-wide register access.
private struct UART {
    let serial: Serial
    let sink = RecordingSink()
    let line = RecordingLine()
    init() { serial = Serial(sink: sink, irq: line) }
    init(restoring node: StateNode) throws {
        self.init()
        try serial.restoreNode(node)
    }

    func out(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { serial.write(offset: offset, data: $0) }
    }
    func inb(_ offset: UInt64) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { serial.read(offset: offset, data: $0) }
        return v
    }
    var state: Serial.State { serial.currentState }
    var node: StateNode { (try? serial.saveNode()) ?? StateNode(name: "") }
}

// Register offsets.
private let RBR: UInt64 = 0, IER: UInt64 = 1, IIR: UInt64 = 2, FCR: UInt64 = 2, LCR: UInt64 = 3,
            MCR: UInt64 = 4, LSR: UInt64 = 5, MSR: UInt64 = 6, SCR: UInt64 = 7

@Suite("16550A UART")
struct SerialTests {
    @Test("reset values: LSR THRE|TEMT, LCR 8N1, MCR OUT2, MSR DCD|DSR|CTS, no interrupt")
    func resetValues() {
        let u = UART()
        #expect(u.inb(LSR) == 0x60)
        #expect(u.inb(LCR) == 0x03)
        #expect(u.inb(MCR) == 0x08)
        #expect(u.inb(MSR) == 0xb0)
        #expect(u.inb(IER) == 0x00)
        #expect(u.inb(IIR) == 0x01)
        #expect(u.inb(RBR) == 0x00)             // empty FIFO reads 0
        #expect(u.inb(9) == 0xff)               // outside the register file
        #expect(!u.line.level)
    }

    @Test("bytes written to THR reach the sink in order; THR stays empty (LSR THRE|TEMT, no DR)")
    func transmit() {
        let u = UART()
        for b in Array("hello\n".utf8) { u.out(RBR, b) }
        #expect(u.sink.all == Array("hello\n".utf8))
        #expect(u.inb(LSR) & 0x61 == 0x60)
        #expect(u.serial.stateName == "serial@3f8")
    }

    @Test("DLAB: offsets 0 and 1 become the divisor latch; nothing is transmitted; clearing DLAB restores THR/IER")
    func divisorLatch() {
        let u = UART()
        u.out(LCR, 0x83)
        u.out(RBR, 0x01)
        u.out(IER, 0x02)
        #expect(u.inb(RBR) == 0x01)
        #expect(u.inb(IER) == 0x02)
        #expect(u.sink.all.isEmpty)
        #expect(u.state.dll == 0x01 && u.state.dlh == 0x02 && u.state.ier == 0)
        #expect(!u.line.level)                  // writing DLH did not enable THRE interrupts

        u.out(LCR, 0x03)
        #expect(u.inb(IER) == 0x00)
        u.out(RBR, 0x58)
        #expect(u.sink.all == [0x58])
        #expect(u.state.dll == 0x01)
    }

    @Test("THRE interrupt: raised when enabled, identified by IIR (0x02), cleared by that read, raised again by THR writes")
    func threInterrupt() {
        let u = UART()
        u.out(IER, 0x02)
        #expect(u.line.level)
        #expect(u.inb(IER) == 0x02)
        #expect(u.inb(IIR) == 0x02)
        #expect(!u.line.level)
        #expect(u.inb(IIR) == 0x01)             // nothing pending any more

        u.out(IER, 0x02)                        // already enabled: no new interrupt
        #expect(!u.line.level)
        u.out(RBR, 0x41)
        #expect(u.line.level)
        u.out(IER, 0x00)                        // masked: line drops, the source stays pending
        #expect(!u.line.level)
        #expect(u.inb(IIR) == 0x01)
        u.out(IER, 0x02)
        #expect(u.line.level)

        u.out(FCR, 0x01)                        // FIFOs enabled: IIR bits 7:6 set
        #expect(u.inb(IIR) == 0xc2)
        #expect(u.inb(IIR) == 0xc1)
        #expect(!u.line.level)
        #expect(u.sink.all == [0x41])
    }

    @Test("received data: LSR DR, the RX interrupt (IIR 0x04) held until the FIFO drains, and it outranks THRE")
    func receiveInterrupt() {
        let u = UART()
        #expect(u.serial.enqueueInput([0x41, 0x42]) == 2)
        #expect(u.inb(LSR) & 0x01 == 0x01)
        #expect(!u.line.level)                  // not enabled yet
        u.out(IER, 0x01)
        #expect(u.line.level)
        #expect(u.inb(IIR) == 0x04)
        #expect(u.line.level)                   // reading IIR does not clear a data interrupt
        #expect(u.inb(RBR) == 0x41)
        #expect(u.line.level)
        #expect(u.inb(LSR) & 0x01 == 0x01)
        #expect(u.inb(RBR) == 0x42)
        #expect(!u.line.level)
        #expect(u.inb(LSR) & 0x01 == 0x00)
        #expect(u.inb(IIR) == 0x01)

        u.out(IER, 0x03)                        // THRE pending too
        u.serial.enqueueInput([0x43])
        #expect(u.inb(IIR) == 0x04)
        #expect(u.inb(RBR) == 0x43)
        #expect(u.line.level)                   // THRE still pending
        #expect(u.inb(IIR) == 0x02)
        #expect(!u.line.level)
    }

    @Test("loopback (MCR bit 4): THR bytes come back on RBR, not to the sink; MSR mirrors MCR")
    func loopback() {
        let u = UART()
        u.out(MCR, 0x10)
        #expect(u.inb(MSR) == 0x00)
        u.out(RBR, 0x61)
        u.out(RBR, 0x62)
        #expect(u.sink.all.isEmpty)
        #expect(u.inb(LSR) & 0x01 == 0x01)
        #expect(u.inb(RBR) == 0x61)
        #expect(u.inb(RBR) == 0x62)
        #expect(u.inb(LSR) & 0x01 == 0x00)

        for (mcr, msr) in [(0x11, 0x20), (0x12, 0x10), (0x14, 0x40), (0x18, 0x80), (0x1f, 0xf0)] as [(UInt8, UInt8)] {
            u.out(MCR, mcr)
            #expect(u.inb(MSR) == msr, "MCR 0x\(String(mcr, radix: 16))")
        }
        u.out(MCR, 0xff)
        #expect(u.inb(MCR) == 0x1f)             // only five bits exist

        for i in 0..<70 { u.out(RBR, UInt8(i)) }  // loopback cannot overfill the FIFO either
        #expect(u.state.rx.count == Serial.rxCapacity)
        #expect(u.inb(RBR) == 0)

        u.out(MCR, 0x08)
        #expect(u.inb(MSR) == 0xb0)
        u.out(RBR, 0x63)
        #expect(u.sink.all == [0x63])
    }

    @Test("the RX FIFO holds at most 64 bytes; enqueueInput says how many fit")
    func rxCap() {
        let u = UART()
        #expect(u.serial.enqueueInput([UInt8](repeating: 1, count: 100)) == 64)
        #expect(u.serial.enqueueInput([2]) == 0)
        #expect(u.state.rx.count == 64)
        _ = u.inb(RBR)
        #expect(u.serial.enqueueInput([3, 4]) == 1)
        #expect(u.state.rx.last == 3)
        #expect(u.serial.enqueueInput([]) == 0)
    }

    @Test("FCR bit 1 clears the RX FIFO and DR; FCR without it keeps the data")
    func fifoClear() {
        let u = UART()
        u.serial.enqueueInput([1, 2, 3])
        u.out(IER, 0x01)
        #expect(u.line.level)
        u.out(FCR, 0x01)
        #expect(u.state.rx == [1, 2, 3])
        u.out(FCR, 0x03)
        #expect(u.state.rx.isEmpty)
        #expect(u.inb(LSR) & 0x01 == 0)
        #expect(!u.line.level)
        #expect(u.inb(RBR) == 0)
    }

    @Test("scratch register keeps its value; writes to LSR and MSR are ignored")
    func scratchAndReadOnly() {
        let u = UART()
        u.out(SCR, 0xa5)
        #expect(u.inb(SCR) == 0xa5)
        u.out(LSR, 0x00)
        u.out(MSR, 0x00)
        #expect(u.inb(LSR) == 0x60)
        #expect(u.inb(MSR) == 0xb0)
    }

    @Test("wide reads put the register in byte 0 and zeros above; empty accesses do nothing")
    func accessWidths() {
        let u = UART()
        var wide: [UInt8] = [9, 9, 9, 9]
        wide.withUnsafeMutableBytes { u.serial.read(offset: LSR, data: $0) }
        #expect(wide == [0x60, 0, 0, 0])
        var none: [UInt8] = []
        none.withUnsafeMutableBytes { u.serial.read(offset: LSR, data: $0) }
        [UInt8]().withUnsafeBytes { u.serial.write(offset: RBR, data: $0) }
        #expect(u.sink.all.isEmpty)
    }

    /// A UART with every register away from its reset value and data in the FIFO.
    fileprivate func busyUART() -> UART {
        let u = UART()
        u.out(LCR, 0x80); u.out(RBR, 0x03); u.out(IER, 0x01); u.out(LCR, 0x1b)
        u.out(IER, 0x03)
        u.out(MCR, 0x0b)
        u.out(SCR, 0x77)
        u.out(FCR, 0xc1)
        u.serial.enqueueInput([0x10, 0x20, 0x30])
        return u
    }

    @Test("saveState / restoreState: a fresh UART rebuilt from the state behaves like the original")
    func stateRoundTrip() throws {
        let a = busyUART()
        let saved = a.state
        #expect(saved.dll == 0x03 && saved.dlh == 0x01 && saved.lcr == 0x1b && saved.ier == 0x03)
        #expect(saved.thriPending && saved.rx == [0x10, 0x20, 0x30])

        let b = UART()
        try b.serial.restoreState(saved)
        #expect(b.state == saved)
        #expect(b.line.level)                   // restore drives the line from the restored state
        #expect(b.inb(IIR) == 0xc4)
        #expect(b.inb(RBR) == 0x10)
        #expect(a.inb(RBR) == 0x10)
        #expect(b.state == a.state)
    }

    @Test("restoring an untrusted State refuses a FIFO over 64 bytes and recomputes LSR")
    func hostileRestore() throws {
        var s = Serial.State()
        s.rx = [UInt8](repeating: 0xee, count: 1000)
        let u = UART()
        #expect(throws: StateError.self) { try u.serial.restoreState(s) }
        #expect(u.state == Serial.State())
        s.rx = [UInt8](repeating: 0xee, count: 64)
        s.lsr = 0x00
        try u.serial.restoreState(s)
        #expect(u.state.rx.count == 64)
        #expect(u.inb(LSR) == 0x61)             // DR from the FIFO, THRE|TEMT always

        var empty = Serial.State()
        empty.lsr = 0xff
        try u.serial.restoreState(empty)
        #expect(u.inb(LSR) & 0x01 == 0)
    }

    @Test("MigratableDevice: state → StateNode (named, versioned properties) → restore round trip")
    func nodeRoundTrip() throws {
        let a = busyUART()
        let node = a.node
        #expect(node.name == "serial@3f8")
        #expect(try node.integer(StateNode.versionKey, as: UInt32.self) == 1)
        let registers = try ["ier", "lcr", "mcr", "lsr", "msr", "scr", "dll", "dlh", "fcr"].map { try node.integer($0, as: UInt8.self) }
        #expect(registers == [0x03, 0x1b, 0x0b, 0x61, 0xb0, 0x77, 0x03, 0x01, 0xc1])
        #expect(try node.bool("thri-pending"))
        #expect(try node.bytes("rx-fifo") == [0x10, 0x20, 0x30])

        let b = try UART(restoring: node)
        #expect(b.node == node)
        #expect(b.state == a.state)
        #expect(b.line.level)
        a.out(RBR, 0x55); b.out(RBR, 0x55)
        #expect(a.sink.all == b.sink.all)

        let fresh = UART()
        let quiet = try UART(restoring: fresh.node)
        #expect(quiet.state == Serial.State())
        #expect(!quiet.line.level)
    }

    @Test("hostile StateNode: oversized FIFO, impossible bits, mis-sized, missing or newer properties — refused, nothing changed")
    func hostileNode() throws {
        let u = busyUART()
        let before = u.state
        let good = u.node

        var bigFIFO = good
        bigFIFO.set("rx-fifo", bytes: [UInt8](repeating: 1, count: 1000))
        do { try u.serial.restoreNode(bigFIFO); Issue.record("1000-byte FIFO accepted") } catch {
            guard case .invalid(let n, let why) = error else { Issue.record("wrong error \(error)"); return }
            #expect(n == "serial@3f8" && why.contains("1000"))
        }
        var badIER = good
        badIER.set("ier", UInt8(0xf0))
        #expect(throws: StateError.self) { try u.serial.restoreNode(badIER) }
        var wide = good
        wide.set("lcr", bytes: [0, 3])
        #expect(throws: StateError.badSize(node: "serial@3f8", property: "lcr", expected: 1, got: 2)) { try u.serial.restoreNode(wide) }
        var badBool = good
        badBool.set("thri-pending", bytes: [1])
        #expect(throws: StateError.badSize(node: "serial@3f8", property: "thri-pending", expected: 4, got: 1)) {
            try u.serial.restoreNode(badBool)
        }
        for key in ["ier", "dll", "rx-fifo", "thri-pending", StateNode.versionKey] {
            var missing = good
            missing.properties.removeAll { $0.0 == key }
            #expect(throws: StateError.missing(node: "serial@3f8", property: key)) { try u.serial.restoreNode(missing) }
        }
        var newer = good
        newer.set(StateNode.versionKey, UInt32(2))
        #expect(throws: StateError.unsupportedVersion(node: "serial@3f8", version: 2, known: 1)) { try u.serial.restoreNode(newer) }
        var renamed = good
        renamed.name = "serial@2f8"
        #expect(throws: StateError.self) { try u.serial.restoreNode(renamed) }
        #expect(u.state == before)

        var exactly64 = good
        exactly64.set("rx-fifo", bytes: [UInt8](repeating: 9, count: 64))
        try u.serial.restoreNode(exactly64)
        #expect(u.state.rx.count == 64)
    }
}

import Glibc
import Synchronization

/// Where serial output goes.
public protocol SerialSink: Sendable {
    func write(_ bytes: UnsafeRawBufferPointer)
}

/// Writes serial output to a file descriptor (stdout or a file), unbuffered.
public struct FileDescriptorSink: SerialSink {
    public let fd: Int32
    public init(fd: Int32) { self.fd = fd }
    public func write(_ bytes: UnsafeRawBufferPointer) {
        var rest = bytes
        while let base = rest.baseAddress, !rest.isEmpty {
            let n = Glibc.write(fd, base, rest.count)
            if n < 0 { if errno == EINTR { continue }; return }
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
        }
    }
}

/// A 16550A UART (COM1 at 0x3f8, IRQ 4): transmit to a sink, a bounded receive FIFO.
public final class Serial: BusDevice {
    /// Register file of the UART, enough to rebuild it.
    public struct State: Sendable, Equatable {
        public var ier: UInt8 = 0
        public var lcr: UInt8 = 0x03
        public var mcr: UInt8 = 0x08
        public var lsr: UInt8 = 0x60
        public var msr: UInt8 = 0xb0
        public var scr: UInt8 = 0
        public var dll: UInt8 = 0x0c
        public var dlh: UInt8 = 0
        public var fcr: UInt8 = 0
        /// A THR-empty interrupt is pending (cleared by reading IIR or writing THR).
        public var thriPending: Bool = false
        public var rx: [UInt8] = []
        public init() {}
    }

    /// The receive FIFO never holds more than this (vm-superio's cap, after CVE-2020-27173).
    public static let rxCapacity = 64

    private let state = Mutex(State())
    private let sink: any SerialSink
    private let irq: any InterruptLine

    public init(sink: any SerialSink, irq: any InterruptLine) {
        self.sink = sink
        self.irq = irq
    }

    // Register offsets and bits.
    static let ierRDA: UInt8 = 0x01, ierTHRE: UInt8 = 0x02
    static let lsrDR: UInt8 = 0x01, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40
    static let lcrDLAB: UInt8 = 0x80
    static let mcrLoop: UInt8 = 0x10

    private static func interruptPending(_ s: State) -> Bool {
        (s.ier & ierRDA != 0 && !s.rx.isEmpty) || (s.ier & ierTHRE != 0 && s.thriPending)
    }

    /// The level last driven on the IRQ line (0 unknown, 1 low, 2 high): the line is only
    /// touched when it changes, since every change is a KVM_IRQ_LINE system call.
    private let lineLevel = Atomic<Int>(0)

    private func update(_ s: State) {
        let level = Self.interruptPending(s)
        let code = level ? 2 : 1
        if lineLevel.exchange(code, ordering: .relaxed) != code { irq.set(level: level) }
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let value: UInt8 = state.withLock { s in
            let v: UInt8
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { v = s.dll } else {
                    v = s.rx.isEmpty ? 0 : s.rx.removeFirst()
                    if s.rx.isEmpty { s.lsr &= ~Self.lsrDR }
                }
            case 1: v = s.lcr & Self.lcrDLAB != 0 ? s.dlh : s.ier
            case 2:
                // IIR: FIFOs enabled bits, then the highest-priority pending source.
                let fifo: UInt8 = s.fcr & 1 != 0 ? 0xc0 : 0
                if s.ier & Self.ierRDA != 0 && !s.rx.isEmpty { v = fifo | 0x04 } else if s.ier & Self.ierTHRE != 0 && s.thriPending {
                    v = fifo | 0x02
                    s.thriPending = false
                } else { v = fifo | 0x01 }
            case 3: v = s.lcr
            case 4: v = s.mcr
            case 5: v = s.lsr
            case 6:
                if s.mcr & Self.mcrLoop != 0 {
                    // Loopback: modem outputs appear on the inputs.
                    v = ((s.mcr & 0x01) << 5) | ((s.mcr & 0x02) << 3) | ((s.mcr & 0x04) << 4) | ((s.mcr & 0x08) << 4)
                } else { v = s.msr }
            case 7: v = s.scr
            default: v = 0xff
            }
            update(s)
            return v
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var out: UInt8? = nil
        state.withLock { s in
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { s.dll = value } else if s.mcr & Self.mcrLoop != 0 {
                    if s.rx.count < Self.rxCapacity { s.rx.append(value); s.lsr |= Self.lsrDR }
                    s.thriPending = true
                } else {
                    out = value
                    s.thriPending = true
                }
            case 1:
                if s.lcr & Self.lcrDLAB != 0 { s.dlh = value } else {
                    let old = s.ier
                    s.ier = value & 0x0f
                    // Enabling THRE interrupts with an empty THR raises one at once.
                    if old & Self.ierTHRE == 0 && s.ier & Self.ierTHRE != 0 { s.thriPending = true }
                }
            case 2:
                s.fcr = value
                if value & 0x02 != 0 { s.rx.removeAll(); s.lsr &= ~Self.lsrDR }
            case 3: s.lcr = value
            case 4: s.mcr = value & 0x1f
            case 5, 6: break   // read-only (factory test writes are ignored)
            case 7: s.scr = value
            default: break
            }
            update(s)
        }
        if let b = out {
            withUnsafeBytes(of: b) { sink.write($0) }
        }
    }

    /// Queues bytes typed by the user; returns how many fit in the FIFO.
    @discardableResult
    public func enqueueInput(_ bytes: [UInt8]) -> Int {
        state.withLock { s in
            let n = min(bytes.count, Self.rxCapacity - s.rx.count)
            guard n > 0 else { return 0 }
            s.rx.append(contentsOf: bytes.prefix(n))
            s.lsr |= Self.lsrDR
            update(s)
            return n
        }
    }

    /// The UART's registers and FIFO as they are now.
    public var currentState: State { state.withLock { $0 } }

    /// Rebuilds the UART from a validated state: LSR's data bit is recomputed from the FIFO.
    func apply(_ new: State) {
        var s = new
        s.lsr = (s.lsr & ~Self.lsrDR) | (s.rx.isEmpty ? 0 : Self.lsrDR) | Self.lsrTHRE | Self.lsrTEMT
        lineLevel.store(0, ordering: .relaxed)
        state.withLock { $0 = s; update(s) }
    }
}

extension Serial.State: ComponentState {
    public static let version: UInt32 = 1

    public func encode(into n: inout StateNode) {
        n.set("ier", ier); n.set("lcr", lcr); n.set("mcr", mcr); n.set("lsr", lsr); n.set("msr", msr)
        n.set("scr", scr); n.set("dll", dll); n.set("dlh", dlh); n.set("fcr", fcr)
        n.set("thri-pending", thriPending)
        n.set("rx-fifo", bytes: rx)
    }

    public init(decoding n: StateNode, version: UInt32) throws(StateError) {
        self.init()
        ier = try n.integer("ier"); lcr = try n.integer("lcr"); mcr = try n.integer("mcr")
        lsr = try n.integer("lsr"); msr = try n.integer("msr"); scr = try n.integer("scr")
        dll = try n.integer("dll"); dlh = try n.integer("dlh"); fcr = try n.integer("fcr")
        thriPending = try n.bool("thri-pending")
        rx = try n.bytes("rx-fifo")
        guard rx.count <= Serial.rxCapacity else {
            throw .invalid(node: n.name, reason: "rx FIFO holds \(rx.count) bytes, more than \(Serial.rxCapacity)")
        }
        guard ier & ~0x0f == 0, mcr & ~0x1f == 0 else {
            throw .invalid(node: n.name, reason: "IER 0x\(String(ier, radix: 16)) or MCR 0x\(String(mcr, radix: 16)) has bits a 16550A does not have")
        }
    }
}

extension Serial: MigratableDevice {
    public var stateName: String { "serial@3f8" }
    public var kind: DeviceKind { .serial }
    public func quiesce() {}
    public func unquiesce() {}
    public func saveState() -> State { currentState }
    public func validate(_ state: State) throws(StateError) {
        guard state.rx.count <= Self.rxCapacity else {
            throw .invalid(node: stateName, reason: "rx FIFO holds \(state.rx.count) bytes, more than \(Self.rxCapacity)")
        }
    }
    public func restoreState(_ state: State) throws(StateError) {
        try validate(state)
        apply(state)
    }
}

import Glibc
import Synchronization

/// Why a machine stopped, as requested by a guest-visible device.
public enum GuestStopRequest: Sendable, Equatable {
    /// The guest wrote `value` to the debug-exit port: the VMM exits with `(value << 1) | 1`.
    case debugExit(value: UInt32)
    /// i8042 reset line or a reboot request: the VMM exits 0.
    case reset
    /// The guest powered the machine off (a KVM shutdown system event): the VMM exits 0.
    case powerOff
}

/// Receives stop requests from devices.
public protocol StopRequester: Sendable {
    func requestStop(_ request: GuestStopRequest)
}

/// QEMU `isa-debug-exit` compatible port (0xf4, 4 bytes): a write of v ends the VMM with
/// status `(v << 1) | 1`, so the same image gives the same status under QEMU.
public final class DebugExit: BusDevice {
    public static let port: UInt64 = 0xf4
    let stopper: any StopRequester
    public init(stopper: any StopRequester) { self.stopper = stopper }
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = 0xff }
    }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        var v: UInt32 = 0
        for (i, b) in data.prefix(4).enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
        stopper.requestStop(.debugExit(value: v))
    }
}

/// The i8042 keyboard controller, reduced to what a guest uses to reset the machine
/// (command 0xFE on port 0x64) and what Linux probes.
public final class I8042: BusDevice {
    public static let base: UInt64 = 0x60
    let stopper: any StopRequester
    private let commandByte = Mutex<UInt8>(0)
    public init(stopper: any StopRequester) { self.stopper = stopper }
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        // Status (0x64): output buffer empty, input buffer empty, system flag.
        data[0] = offset == 4 ? 0x04 : 0x00
        for i in 1..<data.count { data[i] = 0 }
    }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let v = data.first else { return }
        if offset == 4 {
            if v == 0xfe { stopper.requestStop(.reset) }
            commandByte.withLock { $0 = v }
        }
    }
}

/// A CMOS RTC (0x70/0x71) that reads the host's UTC time in BCD, so a guest reading the clock
/// gets a sane answer instead of all ones.
public final class CMOS: BusDevice {
    public static let base: UInt64 = 0x70
    private let index = Mutex<UInt8>(0)
    private let ram = Mutex<[UInt8]>([UInt8](repeating: 0, count: 128))
    public init() {}

    static func bcd(_ v: Int32) -> UInt8 { UInt8(((v / 10) << 4) | (v % 10)) }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        guard offset == 1 else { data[0] = 0xff; return }
        let i = index.withLock { $0 } & 0x7f
        var t = time(nil)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let v: UInt8
        switch i {
        case 0x00: v = Self.bcd(tmv.tm_sec)
        case 0x02: v = Self.bcd(tmv.tm_min)
        case 0x04: v = Self.bcd(tmv.tm_hour)
        case 0x06: v = Self.bcd(tmv.tm_wday + 1)
        case 0x07: v = Self.bcd(tmv.tm_mday)
        case 0x08: v = Self.bcd(tmv.tm_mon + 1)
        case 0x09: v = Self.bcd(tmv.tm_year % 100)
        case 0x32: v = Self.bcd((tmv.tm_year + 1900) / 100)
        case 0x0a: v = 0x26          // no update in progress
        case 0x0b: v = 0x02          // 24-hour, BCD
        case 0x0c: v = 0x00
        case 0x0d: v = 0x80          // valid RAM and time
        default: v = ram.withLock { $0[Int(i)] }
        }
        data[0] = v
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let v = data.first else { return }
        if offset == 0 { index.withLock { $0 = v & 0x7f } } else {
            let i = Int(index.withLock { $0 })
            if i >= 0x0e { ram.withLock { $0[i] = v } }
        }
    }
}

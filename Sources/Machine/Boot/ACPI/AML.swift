/// A small typed model of the ACPI Machine Language a DSDT needs to describe fixed devices,
/// and its encoder (ACPI 6.5 §20.2, "AML Grammar Definition").
///
/// The model has three levels — terms (`Scope`, `Device`, `Name`), data (integers, strings,
/// EISA IDs, packages, resource templates) and resource descriptors (§6.4: `IO`,
/// `Memory32Fixed`, extended `Interrupt`) — so a device reads like its ASL:
///
/// ```
/// .device("COM1", [.name("_HID", .eisaID("PNP0501")), .name("_UID", .integer(0)),
///                  .name("_CRS", .resources([.io(base: 0x3f8, length: 8), .interrupt(4)]))])
/// ```
/// Encoding is total: names are checked when a term is made (`AML.Path`), and every length is
/// computed from the encoded children, never written by hand.
public enum AML {
    /// A name path: an optional root prefix (`\`) and 1…255 four-character segments.
    public struct Path: Sendable, Equatable, CustomStringConvertible {
        public let rooted: Bool
        public let segments: [String]

        /// Parses `\_SB_.COM1`, `VR00`, `_HID`; segments shorter than four characters are
        /// padded with `_`. Nil when a segment is empty, longer than four characters or not
        /// [A-Z_][A-Z0-9_]*.
        public init?(_ text: String) {
            rooted = text.hasPrefix("\\")
            let body = rooted ? String(text.dropFirst()) : text
            let parts = body.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !parts.isEmpty, parts.count <= 255, parts.allSatisfy(Self.isSegment) else { return nil }
            segments = parts.map { $0 + String(repeating: "_", count: 4 - $0.count) }
        }

        static func isSegment(_ s: String) -> Bool {
            let b = Array(s.utf8)
            guard (1 ... 4).contains(b.count) else { return false }
            let lead = { (c: UInt8) in (0x41 ... 0x5a).contains(c) || c == 0x5f }
            return lead(b[0]) && b.dropFirst().allSatisfy { lead($0) || (0x30 ... 0x39).contains($0) }
        }

        public var description: String { (rooted ? "\\" : "") + segments.joined(separator: ".") }

        /// NameString: `\` prefix, then one segment, DualNamePrefix + 2, or MultiNamePrefix + n.
        var encoded: [UInt8] {
            var out: [UInt8] = rooted ? [0x5c] : []
            switch segments.count {
            case 1: break
            case 2: out.append(0x2e)
            default: out += [0x2f, UInt8(truncatingIfNeeded: segments.count)]
            }
            for s in segments { out += Array(s.utf8) }
            return out
        }
    }

    /// A term of a definition block's term list.
    public indirect enum Term: Sendable, Equatable {
        /// `Scope (path) { terms }`: opens an existing namespace node.
        case scope(Path, [Term])
        /// `Device (path) { terms }`: a device object.
        case device(Path, [Term])
        /// `Name (path, data)`: a named data object such as `_HID` or `_CRS`.
        case name(Path, Data)
    }

    /// Data objects a `Name` can hold.
    public indirect enum Data: Sendable, Equatable {
        case integer(UInt64)
        /// An ASCII string (NUL-terminated when encoded).
        case string(String)
        /// A seven-character EISA/PNP ID such as `PNP0501`, compressed to a 32-bit integer.
        case eisaID(String)
        case package([Data])
        /// `ResourceTemplate () { … }`: a buffer of descriptors ending with an end tag.
        case resources([Resource])
    }

    /// Resource descriptors (ACPI 6.5 §6.4).
    public enum Resource: Sendable, Equatable {
        /// `IO (Decode16, base, base, alignment, length)`: a fixed range of I/O ports.
        case io(base: UInt16, length: UInt8, alignment: UInt8 = 1)
        /// `Memory32Fixed (ReadWrite|ReadOnly, base, length)`.
        case memory32Fixed(base: UInt32, length: UInt32, writable: Bool = true)
        /// `Interrupt (ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) {gsi}`.
        case interrupt(UInt32, edge: Bool = true, activeLow: Bool = false, shared: Bool = false)
    }

    /// Convenience constructors that check names; an invalid name is a programming error in
    /// the table builder, reported by the caller's test, so they return nil rather than trap.
    public static func name(_ path: String, _ data: Data) -> Term? { Path(path).map { .name($0, data) } }
    public static func device(_ path: String, _ terms: [Term?]) -> Term? {
        guard let p = Path(path), !terms.contains(where: { $0 == nil }) else { return nil }
        return .device(p, terms.compactMap { $0 })
    }
    public static func scope(_ path: String, _ terms: [Term?]) -> Term? {
        guard let p = Path(path), !terms.contains(where: { $0 == nil }) else { return nil }
        return .scope(p, terms.compactMap { $0 })
    }
}

// MARK: encoding

extension AML.Term {
    /// The term's AML bytes.
    public var encoded: [UInt8] {
        switch self {
        case .scope(let path, let terms):
            return [0x10] + AML.package(path.encoded + terms.flatMap(\.encoded))
        case .device(let path, let terms):
            return [0x5b, 0x82] + AML.package(path.encoded + terms.flatMap(\.encoded))
        case .name(let path, let data):
            return [0x08] + path.encoded + data.encoded
        }
    }
}

extension AML.Data {
    /// The data object's AML bytes.
    public var encoded: [UInt8] {
        switch self {
        case .integer(let v): return AML.integer(v)
        case .string(let s): return [0x0d] + Array(s.utf8.filter { $0 != 0 && $0 < 0x80 }) + [0]
        case .eisaID(let id): return AML.integer(UInt64(AML.compressEISAID(id)))
        case .package(let items):
            let count = UInt8(truncatingIfNeeded: min(items.count, 255))
            return [0x12] + AML.package([count] + items.prefix(255).flatMap(\.encoded))
        case .resources(let descriptors):
            let body = descriptors.flatMap(\.encoded) + [0x79, 0x00]   // end tag, checksum 0 = "valid"
            return [0x11] + AML.package(AML.integer(UInt64(body.count)) + body)
        }
    }
}

extension AML.Resource {
    /// The descriptor's bytes.
    public var encoded: [UInt8] {
        var b = ByteBuilder()
        switch self {
        case .io(let base, let length, let alignment):
            b.u8(0x47)                    // small item 0x08 (I/O port), length 7
            b.u8(0x01)                    // decodes 16 bits
            b.u16(base)
            b.u16(base)
            b.u8(alignment)
            b.u8(length)
        case .memory32Fixed(let base, let length, let writable):
            b.u8(0x86)                    // large item 0x06 (32-bit fixed memory range)
            b.u16(9)
            b.u8(writable ? 1 : 0)
            b.u32(base)
            b.u32(length)
        case .interrupt(let gsi, let edge, let activeLow, let shared):
            b.u8(0x89)                    // large item 0x09 (extended interrupt)
            b.u16(6)
            b.u8(0x01 | (edge ? 0x02 : 0) | (activeLow ? 0x04 : 0) | (shared ? 0x08 : 0))   // consumer
            b.u8(1)                       // one interrupt number
            b.u32(gsi)
        }
        return b.bytes
    }
}

extension AML {
    /// The shortest integer encoding: ZeroOp, OneOp, Byte/Word/DWord/QWordConst.
    static func integer(_ v: UInt64) -> [UInt8] {
        var b = ByteBuilder()
        switch v {
        case 0: b.u8(0x00)
        case 1: b.u8(0x01)
        case 2 ... 0xff: b.u8(0x0a); b.u8(UInt8(v))
        case 0x100 ... 0xffff: b.u8(0x0b); b.u16(UInt16(v))
        case 0x1_0000 ... 0xffff_ffff: b.u8(0x0c); b.u32(UInt32(v))
        default: b.u8(0x0e); b.u64(v)
        }
        return b.bytes
    }

    /// `body` preceded by its PkgLength, which counts itself (1 to 4 bytes, §20.2.4).
    static func package(_ body: [UInt8]) -> [UInt8] {
        let n = body.count
        if n + 1 < 0x40 { return [UInt8(n + 1)] + body }
        let width = n + 2 < 1 << 12 ? 2 : n + 3 < 1 << 20 ? 3 : 4
        let total = n + width
        var lead = [UInt8(((width - 1) << 6) | (total & 0x0f))]
        for i in 1 ..< width { lead.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * (i - 1)))) }
        return lead + body
    }

    /// EISAID("PNP0501"): three letters in 5 bits each and four hex digits, stored big-endian
    /// (so its little-endian integer bytes read 41 D0 05 01). Invalid characters count as 0.
    static func compressEISAID(_ id: String) -> UInt32 {
        let c = Array(id.utf8)
        guard c.count == 7 else { return 0 }
        let letter = { (i: Int) in UInt32(c[i] &- 0x40) & 0x1f }
        let hex = { (i: Int) -> UInt32 in UInt32(Int(String(UnicodeScalar(c[i])), radix: 16) ?? 0) }
        let vendor = letter(0) << 10 | letter(1) << 5 | letter(2)
        let product = hex(3) << 12 | hex(4) << 8 | hex(5) << 4 | hex(6)
        let value = vendor << 16 | product
        return value.byteSwapped
    }
}

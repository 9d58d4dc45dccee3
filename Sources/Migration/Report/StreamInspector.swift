import Machine

/// Human-readable summaries of what swiftvmm writes: a machine-state FDT, or a captured
/// migration stream read with the same `SectionReader` a receiver uses.
public enum StreamInspector {
    /// What a file holds, by its first bytes.
    public enum Content {
        case machineState, stream, unknown
    }

    public static func kind(of bytes: [UInt8]) -> Content {
        if bytes.starts(with: [0xd0, 0x0d, 0xfe, 0xed]) { return .machineState }
        if bytes.starts(with: Wire.magic) { return .stream }
        return .unknown
    }

    /// A state tree, one property a line.
    public static func render(_ n: StateNode, indent: String = "") -> String {
        var out = "\(indent)\(n.name.isEmpty ? "/" : n.name) {\n"
        for (k, v) in n.properties { out += "\(indent)  \(k) = \(value(v))\n" }
        for c in n.children { out += render(c, indent: indent + "  ") }
        return out + "\(indent)}\n"
    }

    static func value(_ v: [UInt8]) -> String {
        if v.count > 1, v.last == 0, v.dropLast().allSatisfy({ $0 >= 32 && $0 < 127 || $0 == 0 }) {
            return "\"" + String(decoding: v.dropLast(), as: UTF8.self).split(separator: "\0", omittingEmptySubsequences: false).joined(separator: "\", \"") + "\""
        }
        if v.count == 1 || v.count == 2 || v.count == 4 || v.count == 8 {
            return "0x" + String(v.reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }, radix: 16)
        }
        if v.count <= 32 { return "[" + v.map(hex).joined(separator: " ") + "]" }
        return "<\(v.count) bytes: " + v.prefix(16).map(hex).joined(separator: " ") + " …>"
    }

    private static func hex(_ b: UInt8) -> String { b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16) }

    /// Walks a captured stream: preamble, then every section with its checksum verdict; control
    /// sections and FDTs are shown, page batches counted.
    public static func stream(_ bytes: [UInt8]) -> String {
        let source = ByteBufferSource(bytes)
        let reader = SectionReader(source)
        let version: UInt32
        do { version = try reader.readPreamble() } catch { return "not a migration stream: \(error)\n" }
        var out = "swiftvmm migration stream, version \(version)\n"
        var pages = (sections: 0, bytes: 0)
        while !source.atEnd {
            let raw: SectionReader.RawSection
            do { raw = try reader.readRaw() } catch {
                out += "truncated section at offset \(source.offset)\n"
                break
            }
            if raw.type == .pages {
                pages.sections += 1
                pages.bytes += raw.payload.count
                if !raw.checksumOK { out += "page section \(pages.sections): checksum BAD\n" }
                continue
            }
            out += "section \(raw.typeName): \(raw.payload.count) bytes, checksum \(raw.checksumOK ? "ok" : "BAD")\n"
            if raw.payload.first == UInt8(ascii: "{") { out += "  " + String(decoding: raw.payload, as: UTF8.self) + "\n" }
            if kind(of: raw.payload) == .machineState, let n = try? FDTCodec.decode(raw.payload) {
                out += render(n, indent: "  ")
            }
        }
        if pages.sections > 0 { out += "\(pages.sections) pages sections, \(pages.bytes) bytes\n" }
        return out
    }
}

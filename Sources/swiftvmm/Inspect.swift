import ArgumentParser
import Foundation
import Machine
import Migration

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decode a saved machine-state blob (FDT) or a captured migration stream.")

    @Argument(help: "A device-state FDT (from the API's dump-state) or the bytes of a migration stream.")
    var file: String

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else { throw fail("cannot read '\(file)'") }
        let bytes = Array(data)
        if bytes.starts(with: [0xd0, 0x0d, 0xfe, 0xed]) {
            do { print(Inspector.render(try FDTCodec.decode(bytes))) } catch { throw fail("\(file): \(error)") }
            return
        }
        if bytes.starts(with: Wire.magic) {
            print(Inspector.stream(bytes))
            return
        }
        throw fail("'\(file)' is neither a device-state FDT nor a swiftvmm migration stream")
    }
}

enum Inspector {
    static func render(_ n: StateNode, indent: String = "") -> String {
        var out = "\(indent)\(n.name.isEmpty ? "/" : n.name) {\n"
        for (k, v) in n.properties { out += "\(indent)  \(k) = \(value(v))\n" }
        for c in n.children { out += render(c, indent: indent + "  ") }
        return out + "\(indent)}\n"
    }

    static func value(_ v: [UInt8]) -> String {
        if v.count > 1, v.last == 0, v.dropLast().allSatisfy({ $0 >= 32 && $0 < 127 || $0 == 0 }) {
            return "\"" + String(decoding: v.dropLast(), as: UTF8.self).replacingOccurrences(of: "\0", with: "\", \"") + "\""
        }
        if v.count == 4 || v.count == 8 {
            return "0x" + String(v.reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }, radix: 16)
        }
        if v.count <= 32 { return "[" + v.map { String(format: "%02x", $0) }.joined(separator: " ") + "]" }
        return "<\(v.count) bytes: " + v.prefix(16).map { String(format: "%02x", $0) }.joined(separator: " ") + " …>"
    }

    /// Walks a captured stream: preamble, then every section with its checksum verdict.
    static func stream(_ b: [UInt8]) -> String {
        guard b.count >= 16 else { return "truncated preamble" }
        let version = b[8..<12].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
        var out = "swiftvmm migration stream, version \(version)\n"
        var off = 16
        var counts: [String: (Int, Int)] = [:]
        while off + 12 <= b.count {
            let type = UInt16(b[off]) << 8 | UInt16(b[off + 1])
            let len = Int(b[(off + 4)..<(off + 8)].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) })
            guard off + 8 + len + 4 <= b.count else { out += "truncated section at offset \(off)\n"; break }
            let crc = CRC32C.checksum(Array(b[off..<(off + 8 + len)]))
            let want = b[(off + 8 + len)..<(off + 12 + len)].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
            let name = SectionType(rawValue: type)?.name ?? "unknown(\(type))"
            let payload = Array(b[(off + 8)..<(off + 8 + len)])
            if name == "pages" {
                let c = counts[name] ?? (0, 0)
                counts[name] = (c.0 + 1, c.1 + len)
            } else {
                out += "section \(name): \(len) bytes, checksum \(crc == want ? "ok" : "BAD")\n"
                if payload.first == UInt8(ascii: "{") { out += "  " + String(decoding: payload, as: UTF8.self) + "\n" }
                if payload.starts(with: [0xd0, 0x0d, 0xfe, 0xed]), let n = try? FDTCodec.decode(payload) {
                    out += render(n, indent: "  ")
                }
            }
            off += 12 + len
        }
        for (k, v) in counts { out += "\(v.0) \(k) sections, \(v.1) bytes\n" }
        return out
    }
}
